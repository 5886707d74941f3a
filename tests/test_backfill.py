"""`fs-crm backfill -c FILE DIR`, run as an operator runs it (a subprocess), on the CDRs the live
runs saved (fs_crm/sim/captures/cdr/); and the shipped conf/freeswitch/json_cdr.conf.xml on a real
FreeSWITCH, which writes what backfill reads."""

import base64
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent / "live"))

from scenarios import ACCOUNT, SCENARIOS, check_history  # noqa: E402
from test_cdr import CAPTURES, KILLED, esl_records  # noqa: E402

from fs_crm.calls.cdr import parse_cdr  # noqa: E402
from fs_crm.polling import wait_for  # noqa: E402
from fs_crm.sim.config import sim_config, to_toml  # noqa: E402
from fs_crm.store.outbox import FILE_NAME, Outbox  # noqa: E402
from recordings.tokens import RecordingLinks, TokenCodec, load_secret  # noqa: E402

REPO = Path(__file__).parents[1]
API_KEY = "backfill-key"
CALLS = ("ringgroup_answered", "ringgroup_missed", "outgoing_answered", "blind_transfer", "queue_ringall_answered",
         "ringgroup_two_customers")


def fs_crm(*args):
    env = {**os.environ, "FS_CRM_ACCOUNT_SHOP_API_KEY": API_KEY}
    return subprocess.run([sys.executable, "-m", "fs_crm", "--log-level", "WARNING", *args], capture_output=True,
                          text=True, env=env, timeout=60)


def config(tmp_path, storage: dict | None = None) -> Path:
    table = sim_config("127.0.0.1", 8021, "http://127.0.0.1:9", tmp_path / "state", api_key=API_KEY, storage=storage)
    table["accounts"][0].update(ACCOUNT)
    path = tmp_path / "fs-crm.toml"
    path.write_text(to_toml(table))
    return path


def spool(tmp_path, *scenarios) -> Path:
    """An err-log-dir holding the CDRs of these scenarios' calls, as mod_json_cdr leaves it."""
    directory = tmp_path / "json_cdr"
    directory.mkdir(exist_ok=True)
    for name in scenarios:
        for path in (CAPTURES / name).glob("*.cdr.json"):
            shutil.copy(path, directory / path.name)
    return directory


def queued(tmp_path) -> dict[str, dict]:
    outbox = Outbox(tmp_path / "state" / FILE_NAME)
    try:
        return {item.external_id: item.payload for item in outbox.due("shop", limit=100)}
    finally:
        outbox.close()


def test_given_spooled_cdrs_when_backfilled_twice_then_every_call_queued_once_as_the_esl_path_made_it(tmp_path):
    cfg, directory = config(tmp_path), spool(tmp_path, *CALLS)
    expected = {r.external_id: (name, r) for name in CALLS for r in esl_records(name)}

    first = fs_crm("backfill", "-c", str(cfg), str(directory))
    assert first.returncode == 0, first.stdout + first.stderr
    lines = first.stdout.splitlines()
    assert sorted(re.findall(r"^queued (\S+) account shop", first.stdout, re.M)) == sorted(expected)
    files = len(list(directory.glob("*.cdr.json")))
    assert lines[-1] == ("%d CDR file(s): %d call(s) queued, 0 already known, 0 incomplete, 0 bad file(s); "
                         "0 group(s) of legs made no CRM call (internal, or no account matches)" % (files, len(expected)))
    payloads = queued(tmp_path)
    assert sorted(payloads) == sorted(expected)
    for external_id, (name, record) in expected.items():
        assert check_history(payloads[external_id], SCENARIOS[name]) == [], payloads[external_id]
        assert payloads[external_id] == record.to_api()

    second = fs_crm("backfill", "-c", str(cfg), str(directory))
    assert second.returncode == 0, second.stdout + second.stderr
    assert sorted(re.findall(r"^skipped \(already queued or delivered\) (\S+) account shop", second.stdout, re.M)) == (
        sorted(expected))
    assert re.search("^queued", second.stdout, re.M) is None
    assert " 0 call(s) queued, %d already known," % len(expected) in second.stdout
    assert queued(tmp_path) == payloads


def test_given_a_call_already_delivered_over_esl_when_backfilled_then_skipped(tmp_path):
    cfg, directory = config(tmp_path), spool(tmp_path, "ringgroup_answered", "blind_transfer")
    [seen] = esl_records("ringgroup_answered")
    (tmp_path / "state").mkdir()
    outbox = Outbox(tmp_path / "state" / FILE_NAME)
    outbox.add("shop", seen.external_id, seen.to_api())
    outbox.mark_delivered([item.id for item in outbox.due("shop")])
    outbox.close()

    result = fs_crm("backfill", "-c", str(cfg), str(directory))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "skipped (already queued or delivered) %s account shop" % seen.external_id in result.stdout
    [transferred] = esl_records("blind_transfer")
    assert list(queued(tmp_path)) == [transferred.external_id]


def test_given_storage_when_backfilled_then_the_call_waits_for_its_recording_as_on_the_esl_path(tmp_path):
    cfg = config(tmp_path, storage={"backend": "local", "directory": str(tmp_path / "store")})
    result = fs_crm("backfill", "-c", str(cfg), str(spool(tmp_path, "ringgroup_answered")))
    assert result.returncode == 0, result.stdout + result.stderr
    [record] = esl_records("ringgroup_answered")
    outbox = Outbox(tmp_path / "state" / FILE_NAME)
    try:
        [job] = outbox.due_recordings()
        assert (job.external_id, job.path, job.content_type) == (record.external_id, record.recording_path, "audio/wav")
        assert outbox.due("shop") == []  # held until the recording is stored (or storage.max_wait passed)
    finally:
        outbox.close()
    # The recordUrl the daemon will send: signed with its secret, which backfill made in the state dir.
    [held] = fs_crm_held(tmp_path)
    links = RecordingLinks("http://127.0.0.1:0", TokenCodec(load_secret(None, tmp_path / "state", create=False)))
    assert held == dict(record.to_api(), recordUrl=links.url(job.name))


def fs_crm_held(tmp_path) -> list[dict]:
    """The payloads of the calls held for their recording (the outbox keeps them aside until then)."""
    outbox = Outbox(tmp_path / "state" / FILE_NAME, clock=lambda: time.time() + 10 ** 9)
    try:
        return [item.payload for item in outbox.expired_holds()]
    finally:
        outbox.close()


def test_given_a_bad_file_among_good_ones_then_it_is_named_and_skipped_and_the_rest_queued(tmp_path):
    cfg, directory = config(tmp_path), spool(tmp_path, "ringgroup_answered")
    (directory / "half-written.cdr.json").write_text('{"core-uuid": "x", "variables": {"uuid": ')
    (directory / "unreadable.cdr.json").mkdir()  # reading it fails as an unreadable file does
    (directory / "notes.txt").write_text("not a CDR, not read")

    result = fs_crm("backfill", "-c", str(cfg), str(directory))
    assert result.returncode == 1
    assert "bad file %s: CDR is not valid JSON: Expecting value: line 1 column 41 (char 40); skipped" % (
        directory / "half-written.cdr.json") in result.stdout
    assert "bad file %s: cannot read it: Is a directory; skipped" % (directory / "unreadable.cdr.json") in result.stdout
    [record] = esl_records("ringgroup_answered")
    assert "queued %s account shop" % record.external_id in result.stdout
    assert ", 2 bad file(s);" in result.stdout and list(queued(tmp_path)) == [record.external_id]


def test_given_a_call_with_legs_missing_then_not_queued_unless_partial(tmp_path):
    cfg, directory = config(tmp_path), spool(tmp_path, KILLED)
    [leg] = [parse_cdr(p.read_bytes()) for p in directory.glob("*.cdr.json")]
    result = fs_crm("backfill", "-c", str(cfg), str(directory))
    assert result.returncode == 1
    assert re.search(r"^incomplete call %s: no CDR of leg\(s\) %s, which its legs name; not queued" % (
        leg.uuid, leg.variables["originating_leg_uuid"]), result.stdout, re.M), result.stdout
    partial = fs_crm("backfill", "-c", str(cfg), "--partial", str(directory))
    # The customer's leg died with FreeSWITCH: what is left is no CRM call.
    assert partial.returncode == 0 and "0 call(s) queued" in partial.stdout and "1 group(s) of legs made no CRM" in (
        partial.stdout)


@pytest.mark.parametrize("where,message", [
    ("missing", "fs-crm backfill: cannot read directory {path}: No such file or directory"),
    ("file", "fs-crm backfill: {path} is not a directory"),
])
def test_given_a_bad_directory_then_one_clear_line_and_non_zero_exit(tmp_path, where, message):
    path = tmp_path / where
    if where == "file":
        path.write_text("{}")
    result = fs_crm("backfill", "-c", str(config(tmp_path)), str(path))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [message.format(path=path)]
    assert not (tmp_path / "state" / FILE_NAME).exists()


# --- the shipped mod_json_cdr config on a real FreeSWITCH ---------------------------------------------
class CdrReceiver:
    """A stand-in for fs-crm's /cdr: records each post, answers 200."""

    def __init__(self):
        self.posts: list[tuple[str, dict, bytes]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                receiver.posts.append((self.path, dict(self.headers), body))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = HTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self):
        if self.server.socket.fileno() >= 0:
            self.server.shutdown()
            self.server.server_close()


def test_given_the_shipped_json_cdr_config_on_freeswitch_then_plain_json_posted_with_basic_auth_and_spooled_when_down(
        tmp_path):
    from pbx import INSTALL_HINT, LivePbx, installed

    if not installed():
        if os.environ.get("FS_CRM_LIVE_TESTS") == "required":
            pytest.fail("needs FreeSWITCH 1.11: %s (FS_CRM_LIVE_TESTS=required)" % INSTALL_HINT)
        pytest.skip("needs FreeSWITCH 1.11: %s" % INSTALL_HINT)
    shipped = (REPO / "conf" / "freeswitch" / "json_cdr.conf.xml").read_text()
    assert '<param name="url" value="http://127.0.0.1:8090/cdr"/>' in shipped
    [cred] = re.findall(r'<param name="cred" value="([^"]+)"/>', shipped)
    receiver = CdrReceiver()

    class ShippedJsonCdr(LivePbx):
        """The test PBX with the shipped json_cdr.conf.xml instead of its own (URL: the receiver)."""

        def write_config(self):
            super().write_config()
            conf = self.dirs["conf"]
            (conf / "json_cdr.conf.xml").write_text(
                shipped.replace("http://127.0.0.1:8090/cdr", "http://127.0.0.1:%d/cdr" % receiver.port))
            main = (conf / "freeswitch.xml").read_text()
            main = re.sub(r'<configuration name="json_cdr.conf".*?</configuration>',
                          '<X-PRE-PROCESS cmd="include" data="json_cdr.conf.xml"/>', main, flags=re.S)
            (conf / "freeswitch.xml").write_text(main)

    pbx = ShippedJsonCdr(tmp_path / "pbx")
    pbx.start()
    try:
        # Two loopback legs that end at once (the test PBX's *8 finds nothing to pick up).
        pbx.api("originate loopback/*8/default &park", timeout=10)
        assert wait_for(lambda: len(receiver.posts) == 2, timeout=10), receiver.posts
        for path, headers, body in receiver.posts:
            leg = parse_cdr(body)
            assert path == "/cdr?uuid=%s" % leg.uuid
            assert headers["Content-Type"] == "application/json" and "Expect" not in headers
            assert base64.b64decode(headers["Authorization"].removeprefix("Basic ")).decode() == cred
            assert " " in json.loads(body)["variables"]["start_stamp"]  # encode-values=false: values as they are

        receiver.stop()  # fs-crm down: after the retries the CDRs wait in err-log-dir
        started = time.monotonic()
        pbx.api("originate loopback/*8/default &park", timeout=10)
        spooled = pbx.dirs["log"] / "fs-crm-cdr"
        assert wait_for(lambda: len(list(spooled.glob("*.cdr.json"))) == 2, timeout=20)
        assert time.monotonic() - started >= 3.5  # two retries two seconds apart came first
        for path in spooled.glob("*.cdr.json"):
            assert path.name == "%s.cdr.json" % parse_cdr(path.read_bytes(), path.name).uuid
    finally:
        pbx.stop()
        receiver.stop()

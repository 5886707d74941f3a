"""The `fs-crm` command line, run as an operator would run it (a subprocess)."""

import datetime as dt
import os
import signal
import subprocess
import sys
import time

import pytest
import requests
from e2e import API_KEY, write_toml

from fs_crm.sim import free_port
from fs_crm.sim.calls import RECORDING
from fs_crm.store.outbox import Outbox
from recordings.base import content_type_of
from recordings.local import LocalStore
from recordings.tokens import TokenCodec, recording_name


def fs_crm(*args, env_extra=None, timeout=30):
    env = {**os.environ, "FS_CRM_ACCOUNT_SHOP_API_KEY": API_KEY, **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "fs_crm", *args], capture_output=True, text=True,
                          env=env, timeout=timeout)


def test_given_working_setup_when_check_then_everything_ok_and_exit_zero(fakes, tmp_path):
    fs, crm = fakes
    config = write_toml(tmp_path / "c.toml", fs, crm, tmp_path / "state")
    result = fs_crm("check", "-c", str(config))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "FreeSWITCH %s:%d: OK, authenticated" % (fs.host, fs.port) in result.stdout
    assert "account shop" in result.stdout and "OK, key valid" in result.stdout
    assert API_KEY not in result.stdout + result.stderr


def test_given_wrong_freeswitch_password_when_check_then_says_so_and_exit_nonzero(fakes, tmp_path):
    fs, crm = fakes
    config = write_toml(tmp_path / "c.toml", fs, crm, tmp_path / "state")
    result = fs_crm("check", "-c", str(config), env_extra={"FS_CRM_FREESWITCH_PASSWORD": "S3cret-pass"})
    assert result.returncode == 1
    assert "FAILED" in result.stdout and "refused the event socket password" in result.stdout
    assert "S3cret-pass" not in result.stdout + result.stderr


def test_given_wrong_api_key_when_check_then_account_failed_and_key_not_printed(fakes, tmp_path):
    fs, crm = fakes
    config = write_toml(tmp_path / "c.toml", fs, crm, tmp_path / "state")
    result = fs_crm("check", "-c", str(config), env_extra={"FS_CRM_ACCOUNT_SHOP_API_KEY": "not-the-key-123"})
    assert result.returncode == 1
    assert "account shop" in result.stdout and "FAILED" in result.stdout
    assert "not-the-key-123" not in result.stdout + result.stderr


@pytest.mark.parametrize("text,expected", [
    ("[freeswitch]\nport = \"x\"\n", "[freeswitch] key 'port': must be an integer"),
    ("[[accounts]]\nname = \"a\"\n", "[accounts 'a'] key 'crm_url': is required"),
    ("[bogus]\n", "[bogus]: unknown section"),
    ("not toml [", "not valid TOML"),
])
def test_given_bad_config_when_any_command_then_error_names_file_section_and_key(tmp_path, text, expected):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    result = fs_crm("check", "-c", str(path))
    assert result.returncode == 2
    assert str(path) in result.stderr and expected in result.stderr


def test_given_missing_config_when_run_then_clear_error():
    result = fs_crm("run", "-c", "/nonexistent/fs-crm.toml")
    assert result.returncode == 2
    assert "/nonexistent/fs-crm.toml" in result.stderr and "file not found" in result.stderr


def test_given_calls_set_aside_when_outbox_retry_then_requeued_and_reported(fakes, tmp_path):
    fs, crm = fakes
    state = tmp_path / "state"
    state.mkdir()
    config = write_toml(tmp_path / "c.toml", fs, crm, state)
    outbox = Outbox(state / "outbox.sqlite3")
    outbox.add("shop", "call-1", {"externalId": "call-1"})
    outbox.add("shop", "call-2", {"externalId": "call-2"})
    outbox.set_aside(outbox.due("shop")[0].id, "HTTP 400: calls[0][phone] is invalid")
    outbox.close()

    shown = fs_crm("outbox", "-c", str(config))
    assert shown.returncode == 0
    assert "pending: 1" in shown.stdout and "set aside (failed): 1" in shown.stdout
    assert "call-1" in shown.stdout and "calls[0][phone] is invalid" in shown.stdout

    retried = fs_crm("outbox", "-c", str(config), "--retry", "--all")
    assert retried.returncode == 0
    assert "requeued 1" in retried.stdout and "pending: 2" in retried.stdout


def playback_config(tmp_path, secret_line):
    path = tmp_path / "playback.toml"
    path.write_text(f"""
[state]
dir = "{tmp_path / 'state'}"
[storage]
backend = "local"
directory = "{tmp_path / 'store'}"
{secret_line}
[[accounts]]
name = "shop"
crm_url = "https://shop.retailcrm.ru"
api_key = "unused-here"
client_id = "client-1"
domain = "pbx.test"
[accounts.extensions]
"1" = "100"
""")
    return path


def test_given_standalone_playback_when_crm_fetches_then_recording_served_and_sigterm_exits(tmp_path):
    secret = "a-shared-secret-for-all-playback-hosts"
    name = recording_name("shop", "b24b51ce-a64b-4c83-8bf1-ff188b52cc1b", dt.date(2026, 11, 26), "wav")
    LocalStore(tmp_path / "store").put_file(RECORDING, name, content_type_of(RECORDING), {})
    token = TokenCodec(secret.encode()).make(name)
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "fs_crm", "playback", "-c",
                             str(playback_config(tmp_path, 'url_secret = "%s"' % secret)),
                             "--listen", "127.0.0.1:%d" % port], stderr=subprocess.PIPE, text=True)
    try:
        url = "http://127.0.0.1:%d/records/%s" % (port, token)
        answer = None
        deadline = time.monotonic() + 20
        while answer is None and time.monotonic() < deadline:
            try:
                answer = requests.get(url, params={"clientId": "client-1"}, timeout=2)
            except requests.ConnectionError:
                time.sleep(0.05)
        assert answer is not None and answer.status_code == 200
        assert answer.content == RECORDING.read_bytes() and answer.headers["Content-Type"] == "audio/wav"
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0, proc.stderr.read()


def test_given_playback_without_shared_secret_when_started_then_refuses_with_reason(tmp_path):
    result = fs_crm("playback", "-c", str(playback_config(tmp_path, "")), "--listen", "127.0.0.1:0",
                    env_extra={"FS_CRM_RECORDING_URL_SECRET": ""})
    assert result.returncode == 2
    assert "url_secret" in result.stderr and "FS_CRM_RECORDING_URL_SECRET" in result.stderr


def test_given_bad_listen_when_playback_then_usage_error():
    result = fs_crm("playback", "-c", "x.toml", "--listen", "nowhere")
    assert result.returncode == 2 and "expected HOST:PORT" in result.stderr


def test_given_local_storage_when_check_then_storage_reported(fakes, tmp_path):
    fs, crm = fakes
    config = tmp_path / "c.toml"
    write_toml(config, fs, crm, tmp_path / "state")
    config.write_text(config.read_text() + '\n[storage]\nbackend = "local"\ndirectory = "%s"\n' % (tmp_path / "rec"))
    result = fs_crm("check", "-c", str(config))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "recording storage (local %s): OK" % (tmp_path / "rec") in result.stdout

"""Recording tokens: unguessable, bound to account and call, verifiable with the secret alone."""

import datetime as dt
import os
import stat

import pytest

from recordings.tokens import (
    SECRET_FILE,
    InvalidToken,
    RecordingLinks,
    TokenCodec,
    load_secret,
    recording_name,
)

CODEC = TokenCodec(b"s" * 32)
NAME = recording_name("shop", "b24b51ce-a64b-4c83-8bf1-ff188b52cc1b", dt.date(2026, 11, 26), ".wav")


def test_given_name_when_signed_and_parsed_then_account_call_and_name_come_back():
    ref = CODEC.parse(CODEC.make(NAME))
    assert (ref.account, ref.call_id, ref.name, ref.extension) == (
        "shop", "b24b51ce-a64b-4c83-8bf1-ff188b52cc1b", "shop/2026/11/26/b24b51ce-a64b-4c83-8bf1-ff188b52cc1b.wav", "wav")


def test_given_token_of_another_secret_when_parsed_then_rejected():
    with pytest.raises(InvalidToken):
        TokenCodec(b"x" * 32).parse(CODEC.make(NAME))


def test_given_token_with_name_swapped_when_parsed_then_rejected():
    other = recording_name("other", "b24b51ce-a64b-4c83-8bf1-ff188b52cc1b", dt.date(2026, 11, 26), "wav")
    forged = CODEC.make(other).split(".")[0] + "." + CODEC.make(NAME).split(".")[1]
    with pytest.raises(InvalidToken):
        CODEC.parse(forged)


@pytest.mark.parametrize("junk", ["", "x", "a.b", "..%2F..%2Fetc%2Fpasswd", "../../etc/passwd", "Zm9v.YmFy" * 100,
                                  "\u0444\u0443.\u0444\u0443", "AAAAAAAAAA.AAAAAAAAAAAAAAAAAAAAAAAAAAA="])
def test_given_junk_when_parsed_then_invalid_token(junk):
    with pytest.raises(InvalidToken):
        CODEC.parse(junk)


@pytest.mark.parametrize("account,call,ext", [("../x", "c", "wav"), ("a", "c/../../d", "wav"), ("a", "c", "exe")])
def test_given_unsafe_parts_when_naming_then_refused(account, call, ext):
    with pytest.raises(ValueError):
        recording_name(account, call, dt.date(2026, 1, 1), ext)


def test_given_no_configured_secret_when_loaded_twice_then_same_secret_kept_private(tmp_path, monkeypatch):
    monkeypatch.delenv("FS_CRM_RECORDING_URL_SECRET", raising=False)
    first = load_secret(None, tmp_path)
    assert load_secret(None, tmp_path) == first and len(first) == 32
    assert stat.S_IMODE(os.stat(tmp_path / SECRET_FILE).st_mode) == 0o600


def test_given_configured_secret_when_loaded_then_used_and_nothing_written(tmp_path, monkeypatch):
    monkeypatch.delenv("FS_CRM_RECORDING_URL_SECRET", raising=False)
    assert load_secret("configured-secret-value", tmp_path) == b"configured-secret-value"
    assert not (tmp_path / SECRET_FILE).exists()


def test_given_public_url_when_linking_then_record_url_under_records():
    url = RecordingLinks("https://pbx.example.com/fs-crm/", CODEC).url(NAME)
    assert url.startswith("https://pbx.example.com/fs-crm/records/")
    assert CODEC.parse(url.rsplit("/", 1)[1]).name == NAME
    assert "79121234567" not in url


@pytest.mark.parametrize("umask", [0, 0o077], ids=["umask000", "umask077"])
def test_given_any_umask_when_secret_created_then_state_dir_0700_and_secret_0600(tmp_path, monkeypatch, umask):
    monkeypatch.delenv("FS_CRM_RECORDING_URL_SECRET", raising=False)
    state = tmp_path / "state"
    previous = os.umask(umask)
    try:
        load_secret(None, state)
    finally:
        os.umask(previous)
    assert stat.S_IMODE(os.stat(state).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(state / SECRET_FILE).st_mode) == 0o600


def test_given_leftover_tmp_with_wide_mode_when_secret_created_then_secret_still_0600(tmp_path, monkeypatch):
    monkeypatch.delenv("FS_CRM_RECORDING_URL_SECRET", raising=False)
    leftover = (tmp_path / SECRET_FILE).with_suffix(".tmp")
    leftover.write_text("half-written by a crash")
    os.chmod(leftover, 0o644)
    secret = load_secret(None, tmp_path)
    assert stat.S_IMODE(os.stat(tmp_path / SECRET_FILE).st_mode) == 0o600
    assert (tmp_path / SECRET_FILE).read_text() == secret.hex() and not leftover.exists()

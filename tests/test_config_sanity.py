"""Config that makes sense (issue 10 section 5): what only the CRM can tell, `fs-crm check` run as an
operator runs it (a subprocess) against the fake retailCRM; the offline half is in test_config.py."""

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest
from e2e import API_KEY, config_table

from fs_crm.config import DeliveryConfig, parse_config
from fs_crm.crm.client import CrmClient, CrmError, CrmRejected
from fs_crm.crm.extension_map import compare
from fs_crm.sim.config import sim_config, to_toml
from fs_crm.sim.fake_crm import FakeCrm, user
from fs_crm.sim.fake_freeswitch import FakeFreeswitch

MAP_LINE = "account shop (%s) [accounts.extensions]: "


def fs_crm(*args, env_extra=None):
    env = {k: v for k, v in os.environ.items() if not k.startswith("FS_CRM_")}
    env.update({"FS_CRM_ACCOUNT_SHOP_API_KEY": API_KEY, **(env_extra or {})})
    return subprocess.run([sys.executable, "-m", "fs_crm", *args], capture_output=True, text=True, env=env,
                          timeout=60)


def config_with(tmp_path, fs, crm, leave_out=("api_key",), **account):
    table = config_table(fs, crm, tmp_path / "state")
    table["accounts"][0].update(account)
    path = tmp_path / "fs-crm.toml"
    path.write_text(to_toml(table, leave_out=leave_out))
    return path


def account_of(crm, api_key=API_KEY):
    table = sim_config("127.0.0.1", 8021, crm.url, Path("/nonexistent"), api_key=API_KEY)
    return dataclasses.replace(parse_config("<test>", table, env={}).accounts[0], api_key=api_key)


def map_line(result, crm):
    lines = [line for line in result.stdout.splitlines() if line.startswith(MAP_LINE % crm.url)]
    assert len(lines) == 1, result.stdout + result.stderr
    return lines[0][len(MAP_LINE % crm.url):]


# --- the fake's users list ----------------------------------------------------------------------

def test_given_many_users_when_client_lists_them_then_every_page_read_in_the_official_shape():
    with FakeCrm(api_keys={API_KEY: "shop"}, users=[user(i, "Name%d" % i) for i in range(1, 251)]) as crm:
        client = CrmClient(account_of(crm), DeliveryConfig())
        try:
            users = client.users()
        finally:
            client.close()
        assert [u["id"] for u in users] == list(range(1, 251))
        assert set(users[0]) >= {"id", "active", "firstName", "email", "createdAt", "status", "isManager", "groups"}
        asked = [r.query for r in crm.requests if r.path == "/api/v5/users"]
        assert asked == [{"limit": "100", "page": "1"}, {"limit": "100", "page": "2"}, {"limit": "100", "page": "3"}]
        assert all(r.headers["X-API-KEY"] == API_KEY for r in crm.requests)


@pytest.mark.parametrize("key,message", [("", '"apiKey" is missing.'), ("wrong", 'Wrong "apiKey" value.')])
def test_given_bad_key_when_users_listed_then_fake_refuses_like_the_crm(key, message):
    with FakeCrm(api_keys={API_KEY: "shop"}) as crm:
        client = CrmClient(account_of(crm, api_key=key), DeliveryConfig())
        try:
            with pytest.raises(CrmRejected) as err:
                client.users()
        finally:
            client.close()
        assert err.value.status == 403 and err.value.error_msg == message


# --- the extension map against the users, pure ------------------------------------------------------

USERS = [user(1, "Ivan", "Petrov"), user(2, "Anna"), user(3, "Olga", "Sidorova", active=False)]


@pytest.mark.parametrize("extensions,failures,warnings", [
    (((1, "100"), (2, "200")), (), ()),
    (((100, "1"), (200, "2")),
     ('the map looks reversed: the CRM has no users 100, 200, but it has users 1, 2. [accounts.extensions] of '
      'account shop is "CRM user id" = "extension": write "1" = "100", "2" = "200"',), ()),
    (((1, "100"), (7, "700")),
     ("the CRM has no users with ids 7 (extensions 700): fix [accounts.extensions] of account shop, whose keys are "
      "CRM user ids",), ()),
    (((1, "100"), (200, "2")),
     ("the CRM has no users with ids 200 (extensions 2): fix [accounts.extensions] of account shop, whose keys are "
      'CRM user ids; reversed pairs? "2" = "200" would name existing users',), ()),
    (((1, "100"), (3, "300")), (),
     ("user(s) 3 (Olga Sidorova, extension 300) deactivated in the CRM: remove them from [accounts.extensions] of "
      "account shop or reactivate them",)),
])
def test_given_extension_map_and_crm_users_when_compared_then_problems_say_what_to_do(extensions, failures, warnings):
    report = compare("shop", extensions, USERS)
    assert (report.failures, report.warnings) == (failures, warnings)


# --- fs-crm check ------------------------------------------------------------------------------------

def test_given_map_of_existing_users_when_check_then_map_ok(fakes, tmp_path):
    fs, crm = fakes
    result = fs_crm("check", "-c", str(config_with(tmp_path, fs, crm)))
    assert result.returncode == 0, result.stdout + result.stderr
    assert map_line(result, crm) == "OK, 3 extension(s), each a user of the CRM"
    assert any(r.path == "/api/v5/users" for r in crm.requests)


def test_given_reversed_map_when_check_then_failed_with_the_pairs_to_write(fakes, tmp_path):
    fs, crm = fakes
    path = config_with(tmp_path, fs, crm, extensions={"100": "1", "200": "2", "300": "3"})
    offline = fs_crm("check", "--offline", "-c", str(path))
    assert offline.returncode == 0, offline.stdout + offline.stderr
    assert ("[accounts 'shop'] extensions: OK, WARNING: every CRM user id is longer than its extension "
            '("100" = "1"); the map is "CRM user id" = "extension": if it is written the other way round, swap each '
            'pair ("1" = "100"). `fs-crm check` compares it with the CRM\'s users') in offline.stdout

    result = fs_crm("check", "-c", str(path))
    assert result.returncode == 1
    assert map_line(result, crm) == (
        'FAILED: the map looks reversed: the CRM has no users 100, 200, 300, but it has users 1, 2, 3. '
        '[accounts.extensions] of account shop is "CRM user id" = "extension": write "1" = "100", "2" = "200", '
        '"3" = "300"')


def test_given_map_naming_unknown_and_deactivated_users_when_check_then_failed_naming_them(fakes, tmp_path):
    fs, crm = fakes
    crm.users[2]["active"] = False
    crm.users[2].update(firstName="Anna", lastName="Smirnova")
    result = fs_crm("check", "-c", str(config_with(tmp_path, fs, crm, extensions={"1": "100", "2": "200",
                                                                                  "9": "900"})))
    assert result.returncode == 1
    assert map_line(result, crm) == (
        "FAILED: the CRM has no users with ids 9 (extensions 900): fix [accounts.extensions] of account shop, whose "
        "keys are CRM user ids; user(s) 2 (Anna Smirnova, extension 200) deactivated in the CRM: remove them from "
        "[accounts.extensions] of account shop or reactivate them")


def test_given_deactivated_user_in_map_when_check_then_ok_with_warning(fakes, tmp_path):
    fs, crm = fakes
    crm.users[3]["active"] = False
    result = fs_crm("check", "-c", str(config_with(tmp_path, fs, crm)))
    assert result.returncode == 0, result.stdout + result.stderr
    assert map_line(result, crm) == (
        "OK, 3 extension(s), each a user of the CRM; WARNING: user(s) 3 (User3, extension 300) deactivated in the "
        "CRM: remove them from [accounts.extensions] of account shop or reactivate them")


def test_given_key_without_user_read_when_check_then_map_skipped_not_failed(tmp_path):
    with FakeCrm(api_keys={API_KEY: "shop"}, scopes=("telephony_read", "telephony_write")) as crm, \
            FakeFreeswitch() as fs:
        result = fs_crm("check", "-c", str(config_with(tmp_path, fs, crm)))
    assert result.returncode == 0, result.stdout + result.stderr
    assert map_line(result, crm) == (
        "SKIPPED: the API key lacks user_read, so the map cannot be compared with the CRM's users")
    assert not any(r.path == "/api/v5/users" for r in crm.requests)


def test_given_users_list_failing_when_check_then_failed_with_the_whole_cause(fakes, tmp_path):
    fs, crm = fakes
    crm.answer_next("errors_map", path="/api/v5/users", status=400)
    result = fs_crm("check", "-c", str(config_with(tmp_path, fs, crm)))
    assert result.returncode == 1
    assert map_line(result, crm) == (
        'FAILED: cannot read the CRM\'s users: shop /api/v5/users: HTTP 400: Errors in the entity format '
        '{"calls[0].code": "This value is not valid."}')


def test_given_example_placeholder_key_when_check_then_config_error_says_replace_it(fakes, tmp_path):
    fs, crm = fakes
    path = config_with(tmp_path, fs, crm, leave_out=(), api_key="put-the-key-in-FS_CRM_ACCOUNT_SHOP_API_KEY")
    result = fs_crm("check", "-c", str(path), env_extra={"FS_CRM_ACCOUNT_SHOP_API_KEY": ""})
    assert result.returncode == 2
    assert ("fs-crm: configuration error: %s: [accounts 'shop'] key 'api_key': is the example's placeholder "
            "'put-the-key-in-FS_CRM_ACCOUNT_SHOP_API_KEY': replace the example's API key" % path) in result.stderr
    assert not crm.requests


@pytest.mark.parametrize("account,expected", [
    ({"crm_url": "{crm}/api/v5"}, "key 'crm_url': must be only the scheme and host of the account's retailCRM "
                                  "(fs-crm adds /api/... itself): write \"{crm}\", got '{crm}/api/v5'"),
    ({"timezone": "Moscow"}, "key 'timezone': unknown time zone 'Moscow': write \"Europe/Moscow\""),
    ({"extensions": {}}, "key 'extensions': is empty: without it no call card reaches a manager"),
])
def test_given_config_mistake_when_check_then_exit_2_before_any_request(fakes, tmp_path, account, expected):
    fs, crm = fakes
    account = {k: v.format(crm=crm.url) if isinstance(v, str) else v for k, v in account.items()}
    result = fs_crm("check", "-c", str(config_with(tmp_path, fs, crm, **account)))
    assert result.returncode == 2
    assert "[accounts 'shop'] " + expected.format(crm=crm.url) in result.stderr
    assert not crm.requests


def test_given_long_crm_errors_when_crm_error_shown_then_nothing_cut():
    errors = {"calls[%d][phone]" % i: "This value is not valid." for i in range(50)}
    text = str(CrmError("shop", "Errors in the entity format", 400, errors, "/api/v5/telephony/calls/upload"))
    assert len(text) > 1000 and text.endswith('"calls[49][phone]": "This value is not valid."}')

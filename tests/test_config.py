"""Config loading: the shipped example, layering of secrets, and errors that name file, section and key."""

from pathlib import Path

import pytest

from fs_crm.config import ConfigError, load_config, parse_config
from fs_crm.phones import clean_phone

EXAMPLE = Path(__file__).parent.parent / "conf" / "fs-crm.example.toml"
ACCOUNT = {"name": "shop", "crm_url": "https://shop.retailcrm.ru", "api_key": "k", "client_id": "c", "domain": "d"}


def test_given_shipped_example_when_loaded_then_valid():
    config = load_config(EXAMPLE, env={})
    account = config.accounts[0]
    assert account.name == "shop" and account.user_id_of("200") == 2
    assert account.site_of("8 (499) 999-99-99") == ("shop1", "+74999999999")
    assert account.country == "RU" and account.canonical_phone("8 912 123-45-67") == "79121234567"
    assert account.ignore_status is False
    assert config.storage.backend == "local"


@pytest.mark.parametrize("given,expected", [({}, False), ({"ignore_status": True}, True),
                                            ({"ignore_status": False}, False)])
def test_given_routing_ignore_status_when_loaded_then_per_account(given, expected):
    accounts = parse_config("c.toml", {"accounts": [dict(ACCOUNT, **given), dict(ACCOUNT, name="b", client_id="d", domain="e")]},
                            env={}).accounts
    assert (accounts[0].ignore_status, accounts[1].ignore_status) == (expected, False)


@pytest.mark.parametrize("given,country,canonical", [
    ({}, "RU", "79121234567"),
    ({"country": "RU"}, "RU", "79121234567"),
    ({"country": "kz"}, "KZ", "79121234567"),
    ({"country": "DE"}, "DE", "4989121234567"),   # in Germany 89... is Munich without its 0
])
def test_given_account_country_when_loaded_then_numbers_without_country_code_read_in_it(given, country, canonical):
    account = parse_config("c.toml", {"accounts": [dict(ACCOUNT, **given)]}, env={}).accounts[0]
    assert account.country == country
    assert account.canonical_phone("89121234567") == canonical
    assert account.canonical_phone("+7 912 123 45 67") == "79121234567"
    assert account.canonical_phone("100") == "100"


@pytest.mark.parametrize("configured,dialled", [
    ("+74999999999", "84999999999"), ("+74999999999", "4999999999"), ("8 (499) 999-99-99", "74999999999"),
    ("+49 30 1234567", "030 1234567"), ("+49 30 1234567", "0049301234567"),
])
def test_given_company_number_in_any_spelling_when_dialled_in_another_then_its_store(configured, dialled):
    account = parse_config("c.toml", {"accounts": [dict(ACCOUNT, country="DE" if "+49" in configured else "RU",
                                                        external_phones={"s1": configured})]}, env={}).accounts[0]
    assert account.site_of(dialled) == ("s1", clean_phone(configured))


def test_given_secrets_in_environment_when_loaded_then_they_win_and_are_not_in_repr():
    config = load_config(EXAMPLE, env={"FS_CRM_FREESWITCH_PASSWORD": "fs-secret",
                                       "FS_CRM_ACCOUNT_SHOP_API_KEY": "crm-secret"})
    assert config.freeswitch.password == "fs-secret"
    assert config.accounts[0].api_key == "crm-secret"
    assert "fs-secret" not in repr(config) and "crm-secret" not in repr(config)


@pytest.mark.parametrize("storage,expected", [
    ({"bucket": "b", "region": "us-east-1", "endpoint_url": "http://127.0.0.1:9000"}, "s3"),
    ({"backend": "local"}, "local"),
    ({}, None),
])
def test_given_storage_section_when_loaded_then_backend_follows_what_is_set(storage, expected):
    config = parse_config("c.toml", {"accounts": [ACCOUNT], "storage": storage}, env={})
    assert config.storage.backend == expected


@pytest.mark.parametrize("data,message", [
    ({"accounts": [dict(ACCOUNT, timezone="Mars/Olympus")]}, "[accounts 'shop'] key 'timezone': unknown time zone"),
    ({"accounts": [dict(ACCOUNT, country="XX")]}, "[accounts 'shop'] key 'country': must be an ISO 3166 two-letter"),
    ({"accounts": [dict(ACCOUNT, country="RUS")]}, "key 'country': must be an ISO 3166 two-letter country code"),
    ({"accounts": [dict(ACCOUNT, country="Russia")]}, "key 'country': must be an ISO 3166"),
    ({"accounts": [dict(ACCOUNT, country="")]}, "key 'country': must not be empty"),
    ({"accounts": [dict(ACCOUNT, country=7)]}, "key 'country': must be a string"),
    ({"accounts": [dict(ACCOUNT, extensions={"x": "100"})]}, "key 'extensions.x': CRM user id must be"),
    ({"accounts": [dict(ACCOUNT, extensions={"1": "100", "2": "100"})]}, "is given to two users"),
    ({"accounts": [dict(ACCOUNT, external_phones={"s": "call me"})]}, "key 'external_phones.s': must be a phone"),
    ({"accounts": [ACCOUNT, dict(ACCOUNT, name="b")]}, "key 'client_id': two accounts share one client_id"),
    ({"accounts": [ACCOUNT], "http": {"listen": "nowhere"}}, "[http] key 'listen': must be HOST:PORT"),
    ({"accounts": [ACCOUNT], "storage": {"backend": "s3"}}, "[storage] key 'bucket': is required"),
    ({"accounts": [ACCOUNT], "storage": {"bucket": "b", "url_secret": "short"}}, "key 'url_secret': must be at least"),
    ({"accounts": []}, "[accounts]: at least one [[accounts]] table is required"),
    ({"accounts": [dict(ACCOUNT, api_key="")]}, "key 'api_key': must not be empty"),
    ({"accounts": [dict(ACCOUNT, ignore_status="yes")]}, "[accounts 'shop'] key 'ignore_status': must be true or false"),
])
def test_given_bad_value_when_loaded_then_error_names_file_section_and_key(data, message):
    with pytest.raises(ConfigError) as err:
        parse_config("/etc/fs-crm.toml", data, env={})
    assert str(err.value).startswith("/etc/fs-crm.toml: ")
    assert message in str(err.value)

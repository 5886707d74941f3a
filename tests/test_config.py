"""Config loading: the shipped example, layering of secrets, and errors that name file, section and key."""

import re
from pathlib import Path

import pytest

from fs_crm.config import ConfigError, load_config, looks_reversed, parse_config
from fs_crm.phones import clean_phone

EXAMPLE = Path(__file__).parent.parent / "conf" / "fs-crm.example.toml"
ACCOUNT = {"name": "shop", "crm_url": "https://shop.retailcrm.ru", "api_key": "k", "client_id": "c", "domain": "d",
           "extensions": {"1": "100"}}
OTHER = dict(ACCOUNT, name="outlet", client_id="c2", domain="outlet.pbx")
# The example's api_key and client_id are placeholders: an operator gives them in the environment.
KEY_ENV = {"FS_CRM_ACCOUNT_SHOP_API_KEY": "a-real-key", "FS_CRM_ACCOUNT_SHOP_CLIENT_ID": "a-long-random-client-id"}


def test_given_shipped_example_when_loaded_with_key_in_environment_then_valid():
    config = load_config(EXAMPLE, env=KEY_ENV)
    account = config.accounts[0]
    assert account.name == "shop" and account.user_id_of("200") == 2
    assert account.site_of("8 (499) 999-99-99") == ("shop1", "+74999999999")
    assert account.country == "RU" and account.canonical_phone("8 912 123-45-67") == "79121234567"
    assert account.ignore_status is False
    assert config.storage.backend == "local"


@pytest.mark.parametrize("given,expected", [({}, False), ({"ignore_status": True}, True),
                                            ({"ignore_status": False}, False)])
def test_given_routing_ignore_status_when_loaded_then_per_account(given, expected):
    accounts = parse_config("c.toml", {"accounts": [dict(ACCOUNT, **given), OTHER]}, env={}).accounts
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
                                       "FS_CRM_ACCOUNT_SHOP_API_KEY": "crm-secret",
                                       "FS_CRM_ACCOUNT_SHOP_CLIENT_ID": "client-secret"})
    assert config.freeswitch.password == "fs-secret"
    assert config.accounts[0].api_key == "crm-secret" and config.accounts[0].client_id == "client-secret"
    assert not {"fs-secret", "crm-secret", "client-secret"} & set(re.findall(r"[\w-]+", repr(config)))


@pytest.mark.parametrize("client_id", ["change-me-to-a-long-random-secret", "2dbh26tahjj26sg"])
def test_given_the_example_or_documentation_client_id_when_loaded_then_refused(client_id):
    with pytest.raises(ConfigError) as err:
        load_config(EXAMPLE, env={"FS_CRM_ACCOUNT_SHOP_API_KEY": "k", "FS_CRM_ACCOUNT_SHOP_CLIENT_ID": client_id})
    assert "key 'client_id': is the example's %r: choose a long random secret" % client_id in str(err.value)


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


# --- config that makes sense (issue 10 section 5) -----------------------------------------------------

def write(tmp_path, text):
    path = tmp_path / "fs-crm.toml"
    path.write_text(text)
    return path


def account_toml(name="shop", client_id="c", domain="pbx.test", more="", extensions='"1" = "100"', phones=""):
    return ('[[accounts]]\nname = "%s"\ncrm_url = "https://shop.retailcrm.ru"\napi_key = "k"\nclient_id = "%s"\n'
            'domain = "%s"\n%s\n[accounts.extensions]\n%s\n[accounts.external_phones]\n%s\n'
            % (name, client_id, domain, more, extensions, phones))


def test_given_shipped_example_without_key_in_environment_when_loaded_then_placeholder_refused():
    with pytest.raises(ConfigError) as err:
        load_config(EXAMPLE, env={})
    assert str(err.value) == (
        "%s: [accounts 'shop'] key 'api_key': is the example's placeholder 'put-the-key-in-FS_CRM_ACCOUNT_SHOP_API_KEY': "
        "replace the example's API key with the account's own (an API key of its retailCRM with the telephony_read and "
        "telephony_write scopes), best given in the environment variable FS_CRM_ACCOUNT_SHOP_API_KEY rather than in "
        "this file" % EXAMPLE)


def test_given_example_placeholder_in_the_environment_when_loaded_then_refused_naming_the_variable():
    with pytest.raises(ConfigError, match="FS_CRM_ACCOUNT_SHOP_API_KEY holds the example's placeholder"):
        parse_config("c.toml", {"accounts": [ACCOUNT]},
                     env={"FS_CRM_ACCOUNT_SHOP_API_KEY": "put-the-key-in-FS_CRM_ACCOUNT_SHOP_API_KEY"})


@pytest.mark.parametrize("data,message", [
    # The example's api_key copied into a second account's block.
    ({"accounts": [dict(OTHER, api_key="put-the-key-in-FS_CRM_ACCOUNT_SHOP_API_KEY")]},
     "[accounts 'outlet'] key 'api_key': is the example's placeholder 'put-the-key-in-FS_CRM_ACCOUNT_SHOP_API_KEY': "
     "replace the example's API key with the account's own"),
    # One company number in two accounts, spelt two ways.
    ({"accounts": [dict(ACCOUNT, external_phones={"shop1": "+7 (499) 999-99-99"}),
                   dict(OTHER, external_phones={"outlet1": "74999999999"})]},
     "[accounts 'outlet'] key 'external_phones.outlet1': company number 74999999999 is in two accounts: 'shop' "
     "(store shop1, as +74999999999) and 'outlet' (store outlet1); a call on it could not be told apart: keep it in "
     "one account only"),
    ({"accounts": [dict(ACCOUNT, external_phones={"shop1": "+74999999999"}),
                   dict(OTHER, external_phones={"outlet1": "8 499 999 99 99"})]},
     "company number 84999999999 is in two accounts: 'shop' (store shop1, as +74999999999) and 'outlet'"),
    # ... or in two stores of one account.
    ({"accounts": [dict(ACCOUNT, external_phones={"shop1": "+74999999999", "shop2": "8 (499) 999-99-99"})]},
     "[accounts 'shop'] key 'external_phones.shop2': company number '8 (499) 999-99-99' is store shop1's too: a call "
     "on it would always go to shop1; give each number to one store"),
    # An empty extension map, or none.
    ({"accounts": [dict(ACCOUNT, extensions={})]},
     "[accounts 'shop'] key 'extensions': is empty: without it no call card reaches a manager and no call in the CRM "
     "history has one; add the managers as a table [accounts.extensions] of \"CRM user id\" = \"extension\", "
     "e.g. \"1\" = \"100\""),
    ({"accounts": [{k: v for k, v in ACCOUNT.items() if k != "extensions"}]},
     "[accounts 'shop'] key 'extensions': is missing: without it no call card reaches a manager"),
    # A reversed extension map that can be told offline: the key cannot be a CRM user id.
    ({"accounts": [dict(ACCOUNT, extensions={"0100": "1"})]},
     "[accounts 'shop'] key 'extensions.0100': CRM user id must be a positive integer (no leading zero), got '0100'; "
     "the map is \"CRM user id\" = \"extension\": if '0100' is the extension, swap the pair: \"1\" = \"0100\""),
    ({"accounts": [dict(ACCOUNT, extensions={"sales-1": "7"})]},
     "key 'extensions.sales-1': CRM user id must be a positive integer (no leading zero), got 'sales-1'; the map is "
     "\"CRM user id\" = \"extension\": if 'sales-1' is the extension, swap the pair: \"7\" = \"sales-1\""),
    ({"accounts": [dict(ACCOUNT, extensions={"0": "100"})]}, "key 'extensions.0': CRM user id must be a positive"),
    # Time zones as people write them.
    ({"accounts": [dict(ACCOUNT, timezone="Moscow")]},
     "[accounts 'shop'] key 'timezone': unknown time zone 'Moscow': write \"Europe/Moscow\" (an IANA zone name, "
     "Area/City)"),
    ({"accounts": [dict(ACCOUNT, timezone="moscow")]}, "unknown time zone 'moscow': write \"Europe/Moscow\""),
    ({"accounts": [dict(ACCOUNT, timezone="europe/moscow")]}, "unknown time zone 'europe/moscow': write \"Europe/Moscow\""),
    ({"accounts": [dict(ACCOUNT, timezone="MSK")]}, "unknown time zone 'MSK': write \"Europe/Moscow\""),
    ({"accounts": [dict(ACCOUNT, timezone="Yekaterinburg")]}, "write \"Asia/Yekaterinburg\""),
    ({"accounts": [dict(ACCOUNT, timezone="New York")]}, "unknown time zone 'New York': write \"America/New_York\""),
    ({"accounts": [dict(ACCOUNT, timezone="Istanbul")]},
     "unknown time zone 'Istanbul': write one of \"Asia/Istanbul\", \"Europe/Istanbul\""),
    ({"accounts": [dict(ACCOUNT, timezone="Europe/Moskow")]}, "unknown time zone 'Europe/Moskow': write \"Europe/Moscow\""),
    ({"accounts": [dict(ACCOUNT, timezone="UTC+3")]},
     "unknown time zone 'UTC+3': write \"Etc/GMT-3\" (the tz database's sign is the other way round), or better "
     "a city's zone"),
    # No "Etc/GMT-13" for GMT-13 (that is UTC+13), and nothing made up for a zone that is not one.
    ({"accounts": [dict(ACCOUNT, timezone="GMT-13")]},
     "unknown time zone 'GMT-13': give an IANA zone name (Area/City), e.g. \"Europe/Moscow\""),
    ({"accounts": [dict(ACCOUNT, timezone="Mars/Olympus")]},
     "unknown time zone 'Mars/Olympus': give an IANA zone name (Area/City), e.g. \"Europe/Moscow\""),
    # crm_url with a path.
    ({"accounts": [dict(ACCOUNT, crm_url="https://shop.retailcrm.ru/api/v5")]},
     "[accounts 'shop'] key 'crm_url': must be only the scheme and host of the account's retailCRM (fs-crm adds "
     "/api/... itself): write \"https://shop.retailcrm.ru\", got 'https://shop.retailcrm.ru/api/v5'"),
    ({"accounts": [dict(ACCOUNT, crm_url="https://shop.retailcrm.ru/admin/orders")]},
     "write \"https://shop.retailcrm.ru\", got 'https://shop.retailcrm.ru/admin/orders'"),
    ({"accounts": [dict(ACCOUNT, crm_url="https://crm.shop.test:8443/?apiKey=x")]}, "write \"https://crm.shop.test:8443\""),
])
def test_given_config_that_makes_no_sense_when_loaded_then_error_says_what_to_do(data, message):
    with pytest.raises(ConfigError) as err:
        parse_config("/etc/fs-crm.toml", data, env={})
    assert str(err.value).startswith("/etc/fs-crm.toml: ")
    assert message in str(err.value)


def test_given_crm_url_with_user_and_password_when_loaded_then_error_does_not_repeat_them():
    with pytest.raises(ConfigError) as err:
        parse_config("c.toml", {"accounts": [dict(ACCOUNT, crm_url="https://me:s3cret@shop.retailcrm.ru")]}, env={})
    assert "write \"https://shop.retailcrm.ru\"" in str(err.value) and "s3cret" not in str(err.value)


@pytest.mark.parametrize("crm_url", ["https://shop.retailcrm.ru", "https://shop.retailcrm.ru/", "http://127.0.0.1:8080"])
def test_given_crm_url_of_scheme_and_host_when_loaded_then_kept_without_slash(crm_url):
    account = parse_config("c.toml", {"accounts": [dict(ACCOUNT, crm_url=crm_url)]}, env={}).accounts[0]
    assert account.crm_url == crm_url.rstrip("/")


def test_given_same_number_in_two_accounts_in_toml_when_loaded_then_both_accounts_and_stores_named(tmp_path):
    path = write(tmp_path, account_toml(phones='shop1 = "+7 (499) 999-99-99"')
                 + account_toml("outlet", "c2", "outlet.test", extensions='"7" = "700"', phones='outlet1 = "74999999999"'))
    with pytest.raises(ConfigError) as err:
        load_config(path, env={})
    assert str(err.value) == (
        "%s: [accounts 'outlet'] key 'external_phones.outlet1': company number 74999999999 is in two accounts: 'shop' "
        "(store shop1, as +74999999999) and 'outlet' (store outlet1); a call on it could not be told apart: keep it "
        "in one account only" % path)


def test_given_different_numbers_in_two_accounts_when_loaded_then_valid(tmp_path):
    path = write(tmp_path, account_toml(phones='shop1 = "+74999999999"')
                 + account_toml("outlet", "c2", "outlet.test", extensions='"7" = "700"', phones='outlet1 = "+74995555555"'))
    assert [a.external_phones for a in load_config(path, env={}).accounts] == [
        (("shop1", "+74999999999"),), (("outlet1", "+74995555555"),)]


@pytest.mark.parametrize("extensions,message", [
    ("", "key 'extensions': is empty"),
    ('"100" = "alice"\n"sales" = "2"', "key 'extensions.sales': CRM user id must be a positive integer"),
    ('"1" = "100"\n"2" = "100"', "key 'extensions.2': extension '100' is given to two users"),
])
def test_given_bad_extension_map_in_toml_when_loaded_then_error_names_the_key(tmp_path, extensions, message):
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, account_toml(extensions=extensions)), env={})
    assert str(err.value).startswith("%s: [accounts 'shop'] " % (tmp_path / "fs-crm.toml"))
    assert message in str(err.value)


@pytest.mark.parametrize("extensions,reversed_", [
    ({"100": "1", "200": "2"}, True),     # extension = user id
    ({"1": "100", "2": "200"}, False),    # as it should be
    ({"1234": "101"}, True),              # could be either: only a warning (`fs-crm check --offline`)
    ({"100": "1", "2": "200"}, False),    # partly: `fs-crm check` finds it with the CRM's users
    ({"100": "alice"}, False),
])
def test_given_extension_map_when_loaded_then_loaded_and_reversal_only_hinted(extensions, reversed_):
    account = parse_config("c.toml", {"accounts": [dict(ACCOUNT, extensions=extensions)]}, env={}).accounts[0]
    assert account.extensions == tuple((int(k), v) for k, v in extensions.items())
    assert looks_reversed(account.extensions) is reversed_

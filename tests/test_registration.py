"""Registering the telephony module: the payload and the comparison (pure), the client methods
against the fake retailCRM, and `fs-crm register` run as an operator would run it."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from fs_crm.config import AccountConfig, DeliveryConfig
from fs_crm.crm.client import CrmClient, CrmRejected
from fs_crm.crm.registration import differences, info_problems, module_payload, public_url_warnings
from fs_crm.sim.fake_crm import FakeCrm, _json

SHOP_KEY, OUTLET_KEY = "shop-key-5f3a9c1e", "outlet-key-77d0b2aa"
PUBLIC_URL = "https://pbx.example.com"
DELIVERY = DeliveryConfig(connect_timeout=1.0, event_read_timeout=1.0, upload_read_timeout=1.0,
                          telephony_rps=10_000, general_rps=10_000)


def shop(**overrides) -> AccountConfig:
    fields = dict(name="shop", crm_url="https://shop.retailcrm.ru", api_key=SHOP_KEY, client_id="client-shop-1",
                  code="fs-crm", domain="shop.pbx", timezone="Europe/Moscow",
                  extensions=((1, "100"), (2, "200")),
                  external_phones=(("shop1", "+74999999999"), ("shop2", "+74998888888")))
    fields.update(overrides)
    return AccountConfig(**fields)


EXPECTED_SHOP_MODULE = {
    "code": "fs-crm",
    "integrationCode": "fs-crm",
    "active": True,
    "name": "FreeSWITCH (fs-crm)",
    "logo": "https://pbx.example.com/logo.svg",
    "clientId": "client-shop-1",
    "baseUrl": "https://pbx.example.com",
    "accountUrl": "https://pbx.example.com/",
    "integrations": {
        "telephony": {
            "makeCallUrl": "https://pbx.example.com/make-call",
            "changeUserStatusUrl": "https://pbx.example.com/change-status",
            "allowEdit": False,
            "inputEventSupported": True,
            "outputEventSupported": True,
            "hangupEventSupported": True,
            "additionalCodes": [{"userId": 1, "code": "100"}, {"userId": 2, "code": "200"}],
            "externalPhones": [{"siteCode": "shop1", "externalPhone": "+74999999999"},
                               {"siteCode": "shop2", "externalPhone": "+74998888888"}],
        },
    },
}


# --- module_payload -------------------------------------------------------------------------------

def test_given_two_extensions_and_two_stores_when_module_payload_then_exact_module():
    assert module_payload(shop(), PUBLIC_URL) == EXPECTED_SHOP_MODULE


def test_given_public_url_with_trailing_slash_when_module_payload_then_no_double_slash():
    assert module_payload(shop(), PUBLIC_URL + "/") == EXPECTED_SHOP_MODULE


def test_given_module_payload_when_serialized_then_booleans_explicit_and_no_api_key():
    wire = json.dumps(module_payload(shop(), PUBLIC_URL))
    telephony = json.loads(wire)["integrations"]["telephony"]
    assert telephony["allowEdit"] is False
    assert all(telephony[k] is True for k in ("inputEventSupported", "outputEventSupported", "hangupEventSupported"))
    assert '"allowEdit": false' in wire and '"active": true' in wire
    assert SHOP_KEY not in wire and "apiKey" not in wire


def test_given_no_extensions_nor_numbers_when_module_payload_then_empty_lists_sent():
    telephony = module_payload(shop(extensions=(), external_phones=()), PUBLIC_URL)["integrations"]["telephony"]
    assert telephony["additionalCodes"] == [] and telephony["externalPhones"] == []


# --- differences ----------------------------------------------------------------------------------

def crm_view(**telephony_overrides) -> dict:
    """EXPECTED_SHOP_MODULE as the CRM answers GET: read-only flags added, no clientId."""
    module = json.loads(json.dumps(EXPECTED_SHOP_MODULE))
    del module["clientId"]
    module.update(freeze=False, native=False, availableCountries=[], actions=[])
    module["integrations"]["telephony"].update(telephony_overrides)
    return module


def test_given_crm_answer_of_the_same_module_when_differences_then_none():
    assert differences(EXPECTED_SHOP_MODULE, crm_view()) == []


def test_given_lists_reordered_and_user_ids_as_strings_when_differences_then_none():
    actual = crm_view(additionalCodes=[{"userId": "2", "code": "200"}, {"userId": "1", "code": "100"}],
                      externalPhones=list(reversed(EXPECTED_SHOP_MODULE["integrations"]["telephony"]
                                                   ["externalPhones"])))
    assert differences(EXPECTED_SHOP_MODULE, actual) == []


@pytest.mark.parametrize("change,expected", [
    (lambda m: m["integrations"]["telephony"].update(allowEdit=True),
     ["integrations.telephony.allowEdit: the CRM has True, config gives False"]),
    (lambda m: m.update(active=False), ["active: the CRM has False, config gives True"]),
    (lambda m: m["integrations"]["telephony"].pop("makeCallUrl"),
     ["integrations.telephony.makeCallUrl: missing in the CRM, config gives 'https://pbx.example.com/make-call'"]),
    (lambda m: m["integrations"]["telephony"].update(additionalCodes=[{"userId": 1, "code": "100"},
                                                                      {"userId": 3, "code": "300"}]),
     ["extensions (additionalCodes): missing in the CRM: user 2 -> 200; "
      "in the CRM but not in the config: user 3 -> 300"]),
    (lambda m: m["integrations"]["telephony"].update(externalPhones=[]),
     ["external numbers (externalPhones): missing in the CRM: store shop1 -> +74999999999, "
      "store shop2 -> +74998888888"]),
    (lambda m: m.pop("integrations"), ["integrations.telephony: missing in the CRM"]),
])
def test_given_crm_module_changed_when_differences_then_each_change_named(change, expected):
    actual = crm_view()
    change(actual)
    assert differences(EXPECTED_SHOP_MODULE, actual) == expected


def test_given_other_client_id_in_crm_when_differences_then_reported_without_values():
    actual = dict(crm_view(), clientId="someone-elses-client-id")
    [line] = differences(EXPECTED_SHOP_MODULE, actual)
    assert line.startswith("clientId:")
    assert "someone-elses-client-id" not in line and "client-shop-1" not in line


def test_given_info_with_unknown_users_and_stores_when_info_problems_then_plain_sentences():
    assert info_problems("shop", {"notExistUsersIds": [7, 9], "notExistSiteCodes": ["ghost"]}) == [
        "the CRM has no users with ids 7, 9: fix [accounts.extensions] of account shop",
        "the CRM has no store with code ghost: fix [accounts.external_phones] of account shop",
    ]
    assert info_problems("shop", {}) == []


@pytest.mark.parametrize("url,count", [("https://pbx.example.com", 0), ("http://pbx.example.com", 1),
                                       ("http://127.0.0.1:8090", 2), ("https://localhost:8443", 1)])
def test_given_public_url_when_checked_then_unreachable_or_plain_http_warned(url, count):
    assert len(public_url_warnings(url)) == count


# --- CrmClient against the fake -------------------------------------------------------------------

@pytest.fixture
def fake():
    crm = FakeCrm(api_keys={SHOP_KEY: "shop", OUTLET_KEY: "outlet"}, known_sites={"shop1", "shop2", "outlet1"},
                  known_user_ids={1, 2, 3}).start()
    yield crm
    crm.stop()


@pytest.fixture
def client(fake):
    crm = CrmClient(shop(crm_url=fake.url), DELIVERY)
    yield crm
    crm.close()


def test_given_new_module_when_edit_then_form_field_json_created_201_and_info_empty(fake, client):
    assert client.edit_integration_module(EXPECTED_SHOP_MODULE) == {}  # the fake answers "info": []

    [received] = fake.requests
    assert (received.method, received.path, received.status) == (
        "POST", "/api/v5/integration-modules/fs-crm/edit", 201)
    assert list(received.form) == ["integrationModule"]
    assert json.loads(received.form["integrationModule"]) == EXPECTED_SHOP_MODULE
    assert fake.modules[("shop", "fs-crm")] == EXPECTED_SHOP_MODULE


def test_given_existing_module_when_edit_again_then_updated_200(fake, client):
    client.edit_integration_module(EXPECTED_SHOP_MODULE)
    client.edit_integration_module(EXPECTED_SHOP_MODULE)
    assert [r.status for r in fake.requests] == [201, 200]


def test_given_unknown_users_and_stores_when_edit_then_info_returned(fake, client):
    module = module_payload(shop(extensions=((1, "100"), (7, "700")), external_phones=(("ghost", "+7000"),)),
                            PUBLIC_URL)
    assert client.edit_integration_module(module) == {"notExistUsersIds": [7], "notExistSiteCodes": ["ghost"]}


def test_given_boolean_as_string_when_edit_then_fake_rejects_like_the_crm(fake, client):
    module = json.loads(json.dumps(EXPECTED_SHOP_MODULE))
    module["integrations"]["telephony"]["allowEdit"] = "false"
    module["integrations"]["telephony"]["additionalCodes"][0]["userId"] = "1"
    with pytest.raises(CrmRejected) as caught:
        client.edit_integration_module(module)
    assert caught.value.status == 400
    assert set(caught.value.errors) == {"integrations[telephony][allowEdit]",
                                        "integrations[telephony][additionalCodes][0][userId]"}
    assert fake.modules == {}


@pytest.mark.parametrize("code", ["", "fs crm", "../users", "fs-crm/edit", "a?b=c", None])
def test_given_code_unsafe_for_a_url_path_when_module_methods_then_value_error_and_nothing_sent(fake, client,
                                                                                                code):
    with pytest.raises(ValueError):
        client.get_integration_module(code)
    with pytest.raises(ValueError):
        client.edit_integration_module(dict(EXPECTED_SHOP_MODULE, code=code))
    assert fake.requests == []


def test_given_no_module_when_get_then_none(client):
    assert client.get_integration_module("fs-crm") is None


def test_given_registered_module_when_get_then_crm_view_without_client_id(client):
    client.edit_integration_module(EXPECTED_SHOP_MODULE)
    module = client.get_integration_module("fs-crm")
    assert module["integrations"] == EXPECTED_SHOP_MODULE["integrations"]
    assert "clientId" not in module and module["freeze"] is False
    assert differences(EXPECTED_SHOP_MODULE, module) == []


def test_given_module_given_as_json_string_when_get_then_parsed():
    class StringModuleCrm(FakeCrm):
        def _module_get(self, account, received):
            return _json(200, {"success": True, "integrationModule": json.dumps(EXPECTED_SHOP_MODULE)})

    with StringModuleCrm(api_keys={SHOP_KEY: "shop"}) as crm:
        crm_client = CrmClient(shop(crm_url=crm.url), DELIVERY)
        try:
            assert crm_client.get_integration_module("fs-crm") == EXPECTED_SHOP_MODULE
        finally:
            crm_client.close()


def test_given_html_404_when_get_then_rejected_not_missing(fake, client):
    fake.set_mode("html", status=404)
    with pytest.raises(CrmRejected) as caught:
        client.get_integration_module("fs-crm")
    assert caught.value.status == 404


# --- fs-crm register ------------------------------------------------------------------------------

def write_config(path, crm, shop_extensions='"1" = "100"\n"2" = "200"',
                 shop_phones='shop1 = "+74999999999"\nshop2 = "+74998888888"'):
    path.write_text(f"""
[http]
public_url = "{PUBLIC_URL}"

[state]
dir = "{path.parent / 'state'}"

[[accounts]]
name = "shop"
crm_url = "{crm.url}"
client_id = "client-shop-1"
domain = "shop.pbx"
timezone = "Europe/Moscow"
[accounts.extensions]
{shop_extensions}
[accounts.external_phones]
{shop_phones}

[[accounts]]
name = "outlet"
crm_url = "{crm.url}"
client_id = "client-outlet-1"
domain = "outlet.pbx"
[accounts.extensions]
"3" = "300"
[accounts.external_phones]
outlet1 = "+74997777777"
""")
    return path


def fs_crm(*args, shop_key=SHOP_KEY):
    env = {**os.environ, "FS_CRM_ACCOUNT_SHOP_API_KEY": shop_key, "FS_CRM_ACCOUNT_OUTLET_API_KEY": OUTLET_KEY}
    return subprocess.run([sys.executable, "-m", "fs_crm", *args], capture_output=True, text=True, env=env,
                          timeout=30)


def no_keys_in(result) -> bool:
    output = result.stdout + result.stderr
    return SHOP_KEY not in output and OUTLET_KEY not in output


def test_given_accounts_when_register_then_modules_created_with_exact_fields(fake, tmp_path):
    config = write_config(tmp_path / "c.toml", fake)

    result = fs_crm("register", "-c", str(config))

    assert result.returncode == 0, result.stdout + result.stderr
    assert fake.modules[("shop", "fs-crm")] == EXPECTED_SHOP_MODULE
    outlet = fake.modules[("outlet", "fs-crm")]
    assert outlet["clientId"] == "client-outlet-1"
    assert outlet["integrations"]["telephony"]["additionalCodes"] == [{"userId": 3, "code": "300"}]
    assert [r.status for r in fake.requests] == [201, 201]
    assert "account shop" in result.stdout and "registered" in result.stdout
    assert "WARNING" not in result.stdout
    assert no_keys_in(result)


def test_given_registered_when_register_again_then_updated(fake, tmp_path):
    config = write_config(tmp_path / "c.toml", fake)
    assert fs_crm("register", "-c", str(config)).returncode == 0

    result = fs_crm("register", "-c", str(config))

    assert result.returncode == 0, result.stdout + result.stderr
    assert [r.status for r in fake.requests] == [201, 201, 200, 200]


def test_given_dry_run_when_register_then_json_printed_and_nothing_sent(fake, tmp_path):
    config = write_config(tmp_path / "c.toml", fake)

    result = fs_crm("register", "-c", str(config), "--account", "shop", "--dry-run")

    assert result.returncode == 0, result.stdout + result.stderr
    assert fake.requests == []
    header, _, body = result.stdout.partition("\n")
    assert "account shop" in header and "/api/v5/integration-modules/fs-crm/edit" in header
    assert json.loads(body) == EXPECTED_SHOP_MODULE
    assert body.strip() == json.dumps(EXPECTED_SHOP_MODULE, indent=2, sort_keys=True)
    assert no_keys_in(result)


def test_given_check_when_missing_then_matching_then_config_changed_then_reported(fake, tmp_path):
    config = write_config(tmp_path / "c.toml", fake)

    missing = fs_crm("register", "-c", str(config), "--account", "shop", "--check")
    assert missing.returncode == 1 and "NOT REGISTERED" in missing.stdout

    assert fs_crm("register", "-c", str(config)).returncode == 0
    matching = fs_crm("register", "-c", str(config), "--check")
    assert matching.returncode == 0, matching.stdout + matching.stderr
    assert matching.stdout.count("matches the config") == 2

    write_config(tmp_path / "c.toml", fake, shop_extensions='"1" = "100"\n"2" = "201"')
    changed = fs_crm("register", "-c", str(config), "--check")
    assert changed.returncode == 1
    assert "account shop" in changed.stdout and "DIFFERS" in changed.stdout
    assert ("extensions (additionalCodes): missing in the CRM: user 2 -> 201; "
            "in the CRM but not in the config: user 2 -> 200") in changed.stdout
    assert "outlet" in changed.stdout and "matches the config" in changed.stdout
    assert all(r.method == "GET" for r in fake.requests[-2:])
    assert no_keys_in(changed)


def test_given_unknown_users_and_stores_when_register_then_said_plainly_and_exit_zero(fake, tmp_path):
    config = write_config(tmp_path / "c.toml", fake, shop_extensions='"1" = "100"\n"7" = "700"\n"9" = "900"',
                          shop_phones='shop1 = "+74999999999"\nghost = "+74990000000"')

    result = fs_crm("register", "-c", str(config), "--account", "shop")

    assert result.returncode == 0, result.stdout + result.stderr
    assert "the CRM has no users with ids 7, 9: fix [accounts.extensions]" in result.stdout
    assert "the CRM has no store with code ghost: fix [accounts.external_phones]" in result.stdout


def test_given_wrong_api_key_when_register_then_account_failed_others_done_and_key_not_printed(fake, tmp_path):
    config = write_config(tmp_path / "c.toml", fake)

    result = fs_crm("register", "-c", str(config), shop_key="not-the-key-123")

    assert result.returncode == 1
    assert "account shop" in result.stdout and "FAILED" in result.stdout
    assert "not-the-key-123" not in result.stdout + result.stderr
    assert list(fake.modules) == [("outlet", "fs-crm")]


def test_given_account_option_when_register_then_only_that_account(fake, tmp_path):
    config = write_config(tmp_path / "c.toml", fake)

    result = fs_crm("register", "-c", str(config), "--account", "outlet")

    assert result.returncode == 0, result.stdout + result.stderr
    assert list(fake.modules) == [("outlet", "fs-crm")]
    assert "account outlet" in result.stdout and "account shop" not in result.stdout


def test_given_unknown_account_when_register_then_usage_error_and_nothing_sent(fake, tmp_path):
    config = write_config(tmp_path / "c.toml", fake)

    result = fs_crm("register", "-c", str(config), "--account", "nope")

    assert result.returncode == 2
    assert "'nope'" in result.stderr and "shop, outlet" in result.stderr
    assert fake.requests == []

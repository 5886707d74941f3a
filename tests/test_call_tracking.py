"""Call tracking: a company number's source (retailCRM's source object) goes with its calls' history
as calls[][source]: the config that names it, the mapping from real captured calls, and the upload
the fake CRM receives from the running service."""

import contextlib
import json
from pathlib import Path

import pytest
from e2e import config_table

from fs_crm.calls import CallTracker
from fs_crm.config import ConfigError, load_config, parse_config
from fs_crm.crm.payloads import CallRecord
from fs_crm.freeswitch.eslparse import parse_event_plain
from fs_crm.service import Service
from fs_crm.sim.calls import captured, first_leg, fresh_call

EXAMPLE = Path(__file__).parent.parent / "conf" / "fs-crm.example.toml"
ACCOUNT = {"name": "shop", "crm_url": "https://shop.retailcrm.ru", "api_key": "k", "client_id": "c",
           "domain": "pbx.test", "timezone": "Europe/Moscow", "extensions": {"1": "100", "2": "200", "3": "300"},
           "external_phones": {"shop1": "+74999999999", "shop2": "+74998888888"}}
YANDEX = {"source": "yandex", "medium": "cpc", "campaign": "spring"}


def account_with(sources):
    return parse_config("c.toml", {"accounts": [dict(ACCOUNT, external_phone_sources=sources)]}, env={}).accounts[0]


# --- config -------------------------------------------------------------------------------------
def test_given_no_sources_when_loaded_then_old_configs_stay_valid_and_no_call_has_one():
    account = load_config(EXAMPLE, env={"FS_CRM_ACCOUNT_SHOP_API_KEY": "a-real-key",
                                        "FS_CRM_ACCOUNT_SHOP_CLIENT_ID": "a-long-random-client-id"}).accounts[0]
    assert account.external_phone_sources == ()
    assert account.source_of("+74999999999") is None


@pytest.mark.parametrize("written", ["+74999999999", "74999999999", "8 (499) 999-99-99", "4999999999"])
def test_given_source_for_company_number_in_any_spelling_when_loaded_then_it_belongs_to_that_number(written):
    account = account_with({written: YANDEX})
    assert account.source_of("+74999999999") == YANDEX
    assert account.source_of("+74998888888") is None


@pytest.mark.parametrize("sources,message", [
    ({"+74995555555": YANDEX}, "key 'external_phone_sources.+74995555555': is not a company number of external_phones"),
    ({"+74999999999": {"source": "yandex", "utm_term": "x"}},
     "key 'external_phone_sources.+74999999999.utm_term': unknown key (known: source, medium, campaign, keyword, "
     "content)"),
    ({"+74999999999": {"source": ""}}, "key 'external_phone_sources.+74999999999.source': must be a non-empty string"),
    ({"+74999999999": {"source": "  "}}, "key 'external_phone_sources.+74999999999.source': must be a non-empty"),
    ({"+74999999999": {"campaign": 7}}, "key 'external_phone_sources.+74999999999.campaign': must be a non-empty"),
    ({"+74999999999": {}}, "key 'external_phone_sources.+74999999999': must be a table holding at least one of"),
    ({"+74999999999": "yandex"}, "key 'external_phone_sources.+74999999999': must be a table holding"),
    ({"+74999999999": YANDEX, "84999999999": YANDEX},
     "key 'external_phone_sources.84999999999': names company number +74999999999 a second time"),
])
def test_given_bad_source_when_loaded_then_error_names_file_section_and_key(sources, message):
    with pytest.raises(ConfigError) as error:
        account_with(sources)
    assert str(error.value).startswith("c.toml: [accounts 'shop'] ")
    assert message in str(error.value)


def test_given_sources_not_a_table_when_loaded_then_error_says_what_it_must_be():
    with pytest.raises(ConfigError, match=r"\[accounts 'shop'\] key 'external_phone_sources': must be a table"):
        account_with("yandex")


def test_given_source_in_toml_as_an_operator_writes_it_when_loaded_then_read(tmp_path):
    path = tmp_path / "fs-crm.toml"
    path.write_text('[[accounts]]\nname = "shop"\ncrm_url = "https://shop.retailcrm.ru"\napi_key = "k"\n'
                    'client_id = "c"\ndomain = "pbx.test"\n[accounts.extensions]\n"1" = "100"\n'
                    '[accounts.external_phones]\nshop1 = "+74999999999"\n'
                    '[accounts.external_phone_sources."+74999999999"]\nsource = "yandex"\nmedium = "cpc"\n')
    account = load_config(path, env={}).accounts[0]
    assert account.source_of("+74999999999") == {"source": "yandex", "medium": "cpc"}


# --- mapping ------------------------------------------------------------------------------------
def record_of(scenario, account):
    tracker = CallTracker((account,))
    records = [e for body in captured(scenario) for e in tracker.handle(parse_event_plain(body))
               if isinstance(e, CallRecord)]
    assert len(records) == 1
    return records[0].to_api()


GOOGLE = {"source": "google", "keyword": "sofa"}


@pytest.mark.parametrize("scenario,sources,expected", [
    # Incoming on shop1's number: its source.
    ("in_answered_ringgroup", {"+74999999999": YANDEX}, YANDEX),
    ("in_missed", {"+74999999999": YANDEX}, YANDEX),
    # Incoming on shop2's number: shop2's source, never shop1's.
    ("in_busy", {"+74999999999": YANDEX, "+74998888888": GOOGLE}, GOOGLE),
    ("in_busy", {"+74999999999": YANDEX}, None),
    # A manager dialling out with shop1's number as caller ID: the call was on that number too.
    ("out_answered", {"+74999999999": YANDEX}, YANDEX),
    ("in_answered_ringgroup", {}, None),
])
def test_given_company_number_with_source_when_call_on_it_ends_then_history_carries_source(scenario, sources,
                                                                                          expected):
    record = record_of(scenario, account_with(sources))
    assert record.get("source") == expected
    if expected is None:
        assert "source" not in record  # no empty object, no null


def test_given_source_when_written_then_exact_wire_form_in_file_order():
    record = record_of("in_missed", account_with({"+74999999999": {"campaign": "spring", "source": "yandex"}}))
    assert list(record["source"].items()) == [("campaign", "spring"), ("source", "yandex")]


# --- through the service ------------------------------------------------------------------------
@contextlib.contextmanager
def running(fs, crm, state_dir, sources):
    table = config_table(fs, crm, state_dir)
    table["accounts"][0]["external_phone_sources"] = sources
    svc = Service(parse_config("<e2e>", table, env={}))
    svc.start()
    try:
        assert fs.wait_subscribed(timeout=10)
        yield svc
    finally:
        svc.stop()


def test_given_tracked_number_when_calls_end_then_fake_crm_upload_has_source_only_on_its_calls(fakes, state_dir):
    fs, crm = fakes
    with running(fs, crm, state_dir, {"84999999999": YANDEX}):
        on_shop1, on_shop2 = fresh_call("in_answered_ringgroup", "ct-1"), fresh_call("in_busy", "ct-2")
        fs.play(on_shop1)
        fs.play(on_shop2)
        assert crm.wait_for(lambda: len(crm.calls) == 2, timeout=10)
    by_id = {c["externalId"]: c for c in crm.calls}
    assert by_id[first_leg(on_shop1)]["source"] == YANDEX
    assert by_id[first_leg(on_shop1)]["site"] == "shop1"
    assert "source" not in by_id[first_leg(on_shop2)]
    assert crm.extra_fields == []  # every field, source's included, is one the CRM knows
    # On the wire: calls[][source] is an object of strings inside the `calls` JSON form field.
    sent = [c for r in crm.requests if r.path.endswith("/calls/upload") for c in json.loads(r.form["calls"])]
    assert [c["source"] for c in sent if "source" in c] == [YANDEX]

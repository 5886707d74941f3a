"""The canonical phone form (E.164 digits without +) for every spelling a PBX or the CRM uses."""

import pytest

from fs_crm.phones import _canonical, _parse, canonical_phone, clean_phone, is_country, parse_phone


@pytest.mark.parametrize("number,expected", [
    # one mobile, every spelling
    ("89121234567", "79121234567"),
    ("+7 (912) 123-45-67", "79121234567"),
    ("7 912 123 45 67", "79121234567"),
    ("9121234567", "79121234567"),
    ("8 912 123-45-67", "79121234567"),
    ("8 (912) 123.45.67", "79121234567"),
    ("79121234567", "79121234567"),
    ("+79121234567", "79121234567"),
    (" 8-912-123-45-67 ", "79121234567"),
    ("810 7 912 123 45 67", "79121234567"),         # international dialling prefix
    # Moscow landline and toll-free
    ("8 (499) 999-99-99", "74999999999"),
    ("4999999999", "74999999999"),
    ("88001234567", "78001234567"),
    # another country keeps its country
    ("+49 151 12345678", "4915112345678"),
    ("4915112345678", "4915112345678"),             # E.164 without +: read with + first
    ("810 49 151 12345678", "4915112345678"),
    ("+1 (202) 555-0123", "12025550123"),
    ("380501234567", "380501234567"),               # Ukraine, no +
    ("77012345678", "77012345678"),                 # Kazakhstan shares +7
    ("87012345678", "77012345678"),
])
def test_given_ru_account_when_number_written_any_way_then_one_canonical_form(number, expected):
    assert canonical_phone(number, "RU") == expected
    assert parse_phone(number, "RU") == expected


@pytest.mark.parametrize("number,country,expected", [
    ("0151 12345678", "DE", "4915112345678"),
    ("015112345678", "DE", "4915112345678"),
    ("+49 (0)151 12345678", "DE", "4915112345678"),
    ("4915112345678", "DE", "4915112345678"),        # not 49 49...: + is tried first
    ("0049 151 12345678", "DE", "4915112345678"),
    ("030 1234567", "DE", "49301234567"),
    ("79121234567", "DE", "79121234567"),
    ("+7 912 123 45 67", "DE", "79121234567"),
    ("(202) 555-0123", "US", "12025550123"),
    ("202-555-0123", "US", "12025550123"),
    ("1 202 555 0123", "US", "12025550123"),
    ("12025550123", "US", "12025550123"),
    ("011 49 151 12345678", "US", "4915112345678"),
    ("4915112345678", "US", "4915112345678"),
    ("89121234567", "KZ", "79121234567"),
])
def test_given_other_default_country_when_number_written_any_way_then_canonical(number, country, expected):
    assert canonical_phone(number, country) == expected


@pytest.mark.parametrize("number,expected", [
    ("anonymous", "anonymous"),
    ("sip:89121234567@pbx.test", "sip:89121234567@pbx.test"),
    ("", ""),
    (None, ""),
    ("  ", ""),
    ("+", "+"),
    ("100", "100"),                  # extensions and short numbers are never rewritten
    ("112", "112"),
    ("0800", "0800"),
    ("12345", "12345"),
    ("123456", "123456"),
    ("+7 912 123", "+7912123"),      # too short for +7
    ("1234567", "1234567"),          # a local number without its area code: unknown region
    ("70000000000", "70000000000"),  # no such number anywhere
    ("123-45", "12345"),
    ("8912123456789012", "8912123456789012"),
    ("89121234567&bridge(x)", "89121234567&bridge(x)"),
    ("1\u0661\u0662\u0663\u0664\u0665\u0666", "1\u0661\u0662\u0663\u0664\u0665\u0666"),  # not ASCII digits
])
def test_given_not_a_phone_number_when_canonical_then_as_clean_phone_has_it(number, expected):
    assert canonical_phone(number, "RU") == expected == clean_phone(number)
    assert parse_phone(number, "RU") is None


@pytest.mark.parametrize("number", ["100", "911", "5551234", "12345"])
def test_given_short_or_local_us_number_when_canonical_then_unchanged(number):
    assert canonical_phone(number, "US") == number


def test_given_same_number_when_asked_again_then_answered_from_a_bounded_cache():
    canonical_phone("8 912 555-00-11", "RU")
    hits = _canonical.cache_info().hits
    assert canonical_phone("8 912 555-00-11", "RU") == "79125550011"
    assert _canonical.cache_info().hits == hits + 1
    assert _canonical.cache_info().maxsize == _parse.cache_info().maxsize == 4096


@pytest.mark.parametrize("code,known", [("RU", True), ("DE", True), ("KZ", True), ("XX", False), ("ru", False),
                                        ("001", False), ("", False), (None, False)])
def test_given_country_code_when_checked_then_only_regions_with_numbering_plans(code, known):
    assert is_country(code) is known

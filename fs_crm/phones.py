"""Phone number normalisation shared by the mapping, the config and the HTTP callbacks (pure).

The only importer of phonenumbers (Google's libphonenumber metadata, kept up to date upstream).
"""

from __future__ import annotations

import functools
import re

import phonenumbers

_SEPARATORS = re.compile(r"[\s()\-.]")
_PHONE = re.compile(r"\+?[0-9]{1,32}")
# Extensions, service and short numbers have fewer digits: they are never rewritten.
MIN_DIGITS = 7
# From this many digits, a number without + and without the national prefix is most likely
# already written internationally ("79121234567", "4915112345678").
INTERNATIONAL_DIGITS = 11
CACHE_SIZE = 4096


def digits_of(number: str | None) -> str:
    if not number or number.isdigit():  # most caller ids: nothing to drop
        return number or ""
    return "".join(ch for ch in number if ch.isdigit())


def clean_phone(number: str | None) -> str:
    """A caller id as the CRM should see it: separators dropped, a leading + kept.

    Anything that is not a number after that (anonymous, SIP URIs) comes back unchanged, so the
    CRM shows what the PBX saw rather than nothing.
    """
    raw = (number or "").strip()
    compact = _SEPARATORS.sub("", raw)
    return compact if _PHONE.fullmatch(compact) else raw


def is_country(code: object) -> bool:
    """Whether `code` is an ISO 3166 alpha-2 region phonenumbers has numbering metadata for."""
    return isinstance(code, str) and code in phonenumbers.SUPPORTED_REGIONS


def parse_phone(number: str | None, country: str) -> str | None:
    """The number in E.164 without the +, or None when it is not a phone number (see canonical_phone)."""
    return _parse(clean_phone(number), country)


def canonical_phone(number: str | None, country: str) -> str:
    """The one spelling fs-crm sends to retailCRM: E.164 digits without the + ("79121234567").

    The rule, on the number with separators (spaces, brackets, dashes, dots) dropped:
    - not digits with an optional leading +, or fewer than 7 digits (anonymous, SIP URIs, "100",
      "112", empty): not a phone number, returned as clean_phone() returns it;
    - a leading +: the country code is the caller's; accepted when its length is possible there;
    - 11 or more digits not starting with `country`'s national prefix (RU "8", DE "0"): first read
      as if a + were in front ("79121234567", "4915112345678", "380501234567"), accepted only when
      that is a valid number;
    - otherwise (or when that failed) read as written in `country` (national prefix, national
      digits, or an international dialling prefix such as RU "810" or DE "00"), accepted only when
      valid: "89121234567", "9121234567", "8 912 123-45-67" are all 79121234567 for RU;
    - anything not accepted (local numbers without area code, wrong lengths) comes back as
      clean_phone() returns it, so the CRM still shows what the PBX saw.
    """
    return _canonical(number or "", country)


@functools.lru_cache(maxsize=CACHE_SIZE)
def _canonical(number: str, country: str) -> str:
    # Cached on the raw spelling: it runs for every card and record, with a handful of numbers.
    cleaned = clean_phone(number)
    return _parse(cleaned, country) or cleaned


@functools.lru_cache(maxsize=CACHE_SIZE)
def _parse(cleaned: str, country: str) -> str | None:
    if not _PHONE.fullmatch(cleaned):
        return None
    digits = cleaned.lstrip("+")
    if len(digits) < MIN_DIGITS:
        return None
    if cleaned.startswith("+"):
        return _accepted(cleaned, None, valid_only=False)
    prefix = _national_prefix(country)
    if len(digits) >= INTERNATIONAL_DIGITS and not (prefix and digits.startswith(prefix)):
        found = _accepted("+" + digits, None, valid_only=True)
        if found:
            return found
    return _accepted(digits, country, valid_only=True)


def _accepted(text: str, region: str | None, *, valid_only: bool) -> str | None:
    try:
        parsed = phonenumbers.parse(text, region)
    except phonenumbers.NumberParseException:
        return None
    if valid_only:
        ok = phonenumbers.is_valid_number(parsed)
    else:
        # Full national length; IS_POSSIBLE_LOCAL_ONLY (no area code) is not enough.
        ok = phonenumbers.is_possible_number_with_reason(parsed) == phonenumbers.ValidationResult.IS_POSSIBLE
    return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)[1:] if ok else None


@functools.lru_cache(maxsize=256)
def _national_prefix(country: str) -> str:
    metadata = phonenumbers.PhoneMetadata.metadata_for_region(country)
    return (metadata.national_prefix if metadata is not None else None) or ""

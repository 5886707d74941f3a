"""The telephony integration module fs-crm registers in retailCRM: built from the config, compared
with what the CRM holds, and the CRM's remarks about it put into words. Pure: no I/O.
"""

from __future__ import annotations

from typing import Any

from fs_crm.config import AccountConfig

MODULE_NAME = "FreeSWITCH (fs-crm)"
# Paths under [http] public_url. The CRM sends click-to-call and status changes to the first two;
# the logo must be an SVG (retailCRM shows nothing else) and fs-crm's HTTP server has to serve it.
LOGO_PATH = "/logo.svg"
MAKE_CALL_PATH = "/make-call"
CHANGE_STATUS_PATH = "/change-status"

# Fields of the module we set and can therefore compare; the CRM adds read-only ones (freeze, native...).
_TOP_FIELDS = ("code", "integrationCode", "active", "name", "logo", "clientId", "baseUrl", "accountUrl")
_TELEPHONY_FIELDS = ("makeCallUrl", "changeUserStatusUrl", "allowEdit", "inputEventSupported",
                     "outputEventSupported", "hangupEventSupported")
# retailCRM's GET answer does not echo clientId (the PHP client's test fixture has none), so
# a module that lacks it is not reported as different. Its value is never shown either.
_NOT_ECHOED = ("clientId",)
_SECRET = ("clientId",)


def module_payload(account: AccountConfig, public_url: str) -> dict:
    """The `integrationModule` JSON for POST /api/v5/integration-modules/{code}/edit.

    Every boolean is written out, `false` included: a field left out keeps whatever the CRM had
    (the official Go client cannot send `allowEdit: false` because of omitempty).
    """
    base = public_url.rstrip("/")
    return {
        "code": account.code,
        "integrationCode": account.code,
        "active": True,
        "name": MODULE_NAME,
        "logo": base + LOGO_PATH,
        "clientId": account.client_id,
        "baseUrl": base,
        "accountUrl": base + "/",
        "integrations": {
            "telephony": {
                "makeCallUrl": base + MAKE_CALL_PATH,
                "changeUserStatusUrl": base + CHANGE_STATUS_PATH,
                # Extensions come from the config file: CRM users must not edit them there.
                "allowEdit": False,
                "inputEventSupported": True,
                "outputEventSupported": True,
                "hangupEventSupported": True,
                "additionalCodes": [{"userId": user_id, "code": ext} for user_id, ext in account.extensions],
                "externalPhones": [{"siteCode": site, "externalPhone": number}
                                   for site, number in account.external_phones],
            },
        },
    }


def _telephony(module: dict) -> dict:
    integrations = module.get("integrations")
    telephony = integrations.get("telephony") if isinstance(integrations, dict) else None
    return telephony if isinstance(telephony, dict) else {}


def _user_id(value: Any) -> Any:
    """userId as an int: PHP types it int, Go string; either way it names the same user."""
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    return value


def _codes(value: Any) -> set[tuple[Any, str]]:
    if not isinstance(value, list):
        return set()
    return {(_user_id(item.get("userId")), str(item.get("code"))) for item in value if isinstance(item, dict)}


def _phones(value: Any) -> set[tuple[str, str]]:
    if not isinstance(value, list):
        return set()
    return {(str(item.get("siteCode")), str(item.get("externalPhone"))) for item in value if isinstance(item, dict)}


def _set_difference(name: str, expected: set, actual: set, show: Any) -> list[str]:
    missing, extra = sorted(expected - actual, key=str), sorted(actual - expected, key=str)
    parts = []
    if missing:
        parts.append("missing in the CRM: %s" % ", ".join(show(i) for i in missing))
    if extra:
        parts.append("in the CRM but not in the config: %s" % ", ".join(show(i) for i in extra))
    return ["%s: %s" % (name, "; ".join(parts))] if parts else []


def differences(expected: dict, actual: dict) -> list[str]:
    """What differs between the module we would send and the one the CRM holds, one line each.

    Only the fields fs-crm sets are compared. additionalCodes and externalPhones are compared as
    sets; userId as an int even when the CRM gives a string.
    """
    found: list[str] = []

    def compare(name: str, want: Any, have: dict, key: str) -> None:
        if key not in have:
            if key not in _NOT_ECHOED:
                found.append("%s: missing in the CRM, config gives %s" % (name, _show(key, want)))
            return
        got = have[key]
        if got != want:
            found.append("%s: the CRM has %s, config gives %s" % (name, _show(key, got), _show(key, want)))

    for key in _TOP_FIELDS:
        if key in expected:
            compare(key, expected[key], actual, key)
    want_tel, have_tel = _telephony(expected), _telephony(actual)
    if want_tel and not have_tel:
        return found + ["integrations.telephony: missing in the CRM"]
    for key in _TELEPHONY_FIELDS:
        if key in want_tel:
            compare("integrations.telephony." + key, want_tel[key], have_tel, key)
    found += _set_difference("extensions (additionalCodes)", _codes(want_tel.get("additionalCodes")),
                             _codes(have_tel.get("additionalCodes")), lambda i: "user %s -> %s" % i)
    found += _set_difference("external numbers (externalPhones)", _phones(want_tel.get("externalPhones")),
                             _phones(have_tel.get("externalPhones")), lambda i: "store %s -> %s" % i)
    return found


def _show(key: str, value: Any) -> str:
    return "a different value" if key in _SECRET else repr(value)


def _ids(values: Any) -> list[str]:
    return [str(v) for v in values] if isinstance(values, list) else []


def info_problems(account_name: str, info: dict) -> list[str]:
    """The CRM's remarks in an edit answer, as sentences an operator can act on."""
    problems = []
    users = _ids(info.get("notExistUsersIds"))
    if users:
        problems.append("the CRM has no %s %s: fix [accounts.extensions] of account %s" % (
            "users with ids" if len(users) > 1 else "user with id", ", ".join(users), account_name))
    sites = _ids(info.get("notExistSiteCodes"))
    if sites:
        problems.append("the CRM has no %s %s: fix [accounts.external_phones] of account %s" % (
            "stores with codes" if len(sites) > 1 else "store with code", ", ".join(sites), account_name))
    return problems


def public_url_warnings(public_url: str) -> list[str]:
    """The CRM calls these URLs from the internet: a loopback or plain-http address will not work."""
    warnings = []
    host = public_url.split("://", 1)[-1].split("/", 1)[0].rsplit(":", 1)[0].strip("[]").lower()
    if host in ("localhost", "127.0.0.1", "::1", "0.0.0.0") or host.startswith("127."):
        warnings.append("[http] public_url %s points at this machine: the CRM cannot reach it" % public_url)
    if not public_url.lower().startswith("https://"):
        warnings.append("[http] public_url %s is not https: the CRM's callbacks carry the clientId" % public_url)
    return warnings

"""What retailCRM's answers mean: the data of a success, or one of two domain errors.

`CrmUnavailable` (try again later) or `CrmRejected` (retrying the same request cannot help), decided
from the status, the body and its `success` flag alone: no I/O here, and the API key never reaches
a log line or an exception message.
"""

from __future__ import annotations

import json
import logging
import re
from typing import Any

from fs_crm.config import AccountConfig

logger = logging.getLogger(__name__)

# A proxy in front of a sick CRM answers with a long HTML page; a title or a short excerpt is enough.
SNIPPET = 200

# Refusals about the key, the account or the endpoint, never about what was sent: resending other
# calls cannot help, and setting the calls aside would be wrong. 404 and 405 on a route that exists
# mean the method is missing for this account (retailCRM answers 404 "API method not found" for an
# API version or a method the account does not have; PHP treats a 405 HTML page on a POST as "Account
# does not exist."). Callers that expect a 404 for a missing entity (get_integration_module) check
# for the API's own "Not found" first.
ACCOUNT_PROBLEM_STATUSES = frozenset({401, 403, 404, 405})
# errorMsg fragments (lowercase): retailCRM's own strings ("Wrong \"apiKey\" value.", "Access denied.",
# "Account does not exist.", "Telephony not enabled or not supports calls upload", "API method not
# found") and what `read_answer` says for an HTML answer.
ACCOUNT_PROBLEM_MESSAGES = ("apikey", "access denied", "account does not exist", "telephony not enabled",
                            "not supports calls upload", "api method not found")


class CrmError(Exception):
    """A request to one account's CRM did not succeed."""

    def __init__(self, account: str, error_msg: str, status: int | None = None,
                 errors: dict | list | None = None, path: str | None = None):
        self.account, self.error_msg, self.status = account, error_msg, status
        self.errors, self.path = errors, path
        where = "%s %s" % (account, path) if path else account
        text = "%s: %s" % (where, error_msg) if status is None else "%s: HTTP %s: %s" % (where, status, error_msg)
        if errors:
            # Whole: the CRM's errors are the cause (`fs-crm check`, `outbox` and the logs show them).
            text += " %s" % json.dumps(errors, ensure_ascii=False, default=str)
        super().__init__(text)


class CrmUnavailable(CrmError):
    """Retryable: timeout, connection failure, 5xx, rate limited (503/429), unreadable answer."""


class CrmRejected(CrmError):
    """Final: the CRM refused this request (validation, key, rights, unknown account or method)."""

    def __init__(self, account: str, error_msg: str, status: int | None = None,
                 errors: dict | list | None = None, path: str | None = None, *, account_problem: bool = False):
        super().__init__(account, error_msg, status, errors, path)
        self._account_problem = account_problem

    @property
    def account_problem(self) -> bool:
        """True when the refusal is about the key, account or endpoint, not about what was sent."""
        if self._account_problem:
            return True
        status = self.status or 0
        if status in ACCOUNT_PROBLEM_STATUSES or 300 <= status < 400:
            return True
        text = (self.error_msg or "").lower()
        return any(marker in text for marker in ACCOUNT_PROBLEM_MESSAGES)


def compact_json(value: Any) -> str:
    """JSON as retailCRM's form fields take it (and as short as a log line wants it)."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def scrubbed(text: str, api_key: str) -> str:
    """`text` with the API key masked, for anything that may end up in a log or an exception."""
    return text.replace(api_key, "***") if api_key else text


def _html_summary(text: str) -> str:
    match = re.search(r"<title[^>]*>(.*?)</title>", text, re.IGNORECASE | re.DOTALL)
    summary = match.group(1) if match else re.sub(r"<[^>]+>", " ", text)
    return " ".join(summary.split())[:SNIPPET]


def read_answer(account: AccountConfig, path: str, status: int, content_type: str, body: str,
                location: str | None) -> dict:
    """The JSON object of an answer that says it succeeded; any other answer raises CrmError."""
    name = account.name

    def fail(cls: type[CrmError], msg: str, errors: dict | list | None = None, **flags: bool) -> CrmError:
        logger.debug("%s: %s answered HTTP %s: %s", name, path, status, scrubbed(body[:SNIPPET], account.api_key))
        return cls(name, scrubbed(msg, account.api_key), status, errors, path, **flags)

    if 300 <= status < 400:
        raise fail(CrmRejected, "unexpected redirect to %s; is crm_url right (https, no path)?"
                   % (location or "an unnamed location"))
    retryable = status >= 500 or status in (408, 429)
    text = body.strip()
    if text.startswith("<") or "text/html" in content_type.lower():
        if retryable:
            raise fail(CrmUnavailable, "HTML page instead of JSON (%s)" % _html_summary(text))
        # What retailCRM answers for an account that does not exist (GO and PHP clients agree).
        raise fail(CrmRejected, "HTML page instead of JSON (%s): the account does not exist or crm_url "
                                "is not a retailCRM address" % _html_summary(text), account_problem=True)
    try:
        data = json.loads(text)
    except ValueError:
        data = None
    if not isinstance(data, dict):
        # A 2xx we cannot read may or may not have been applied; resending is safe because
        # uploads deduplicate by externalId, so it counts as retryable.
        cls = CrmRejected if 400 <= status < 500 and not retryable else CrmUnavailable
        raise fail(cls, "unreadable answer: %r" % text[:SNIPPET] if text else "empty answer")
    error_msg = data.get("errorMsg") if isinstance(data.get("errorMsg"), str) and data["errorMsg"] else None
    # A list (["a", "b"]) or a map ({"calls[0][code]": "..."}); an empty one says nothing.
    errors = data.get("errors") if isinstance(data.get("errors"), (dict, list)) and data["errors"] else None
    if retryable:
        raise fail(CrmUnavailable, error_msg or ("rate limited" if status in (429, 503) else "server error"),
                   errors)
    if status >= 400:
        raise fail(CrmRejected, error_msg or "request refused", errors)
    success = data.get("success")
    if success is True:
        return data
    # A 2xx is only a success when it says so with JSON true: the official Python client's tests
    # answer {"success": "false", "errorMsg": "Telephony not enabled or not supports calls upload"}
    # with a 200, and counting that as delivered would lose the calls.
    if error_msg or success is False or success == 0 or (isinstance(success, str)
                                                         and success.strip().lower() in ("false", "0")):
        # The CRM error it describes. Without per-call `errors` it names nothing that was sent, so it
        # is about the account (telephony off, say), not about individual calls.
        raise fail(CrmRejected, error_msg or "request refused (success: %s)" % compact_json(success)[:SNIPPET],
                   errors, account_problem=errors is None)
    # success missing, null or "true" as a string: not a statement we can rely on either way.
    # Resending is safe (uploads deduplicate by externalId), so it is retryable.
    raise fail(CrmUnavailable, "answer without \"success\": true (success: %s)"
               % ("missing" if "success" not in data else compact_json(success)[:SNIPPET]), errors)

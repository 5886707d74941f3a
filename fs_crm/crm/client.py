"""The retailCRM HTTP boundary: the only importer of requests.

Every answer, and every way a request can fail, becomes either a result dataclass or one of two
domain errors: `CrmUnavailable` (try again later) or `CrmRejected` (retrying the same request
cannot help). Nothing from requests leaks out, and the API key never reaches a log line or an
exception message.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

import gevent
import requests

from fs_crm import vocab
from fs_crm.config import AccountConfig, DeliveryConfig

logger = logging.getLogger(__name__)

TELEPHONY = "telephony"
GENERAL = "general"

EVENT_PATH = "/api/v5/telephony/call/event"
UPLOAD_PATH = "/api/v5/telephony/calls/upload"
MANAGER_PATH = "/api/v5/telephony/manager"
CREDENTIALS_PATH = "/api/credentials"
POOL_SIZE = 64  # unversioned, unlike every other method
MODULE_PATH = "/api/v5/integration-modules/%s"
TASK_CREATE_PATH = "/api/v5/tasks/create"
USER_STATUS_PATH = "/api/v5/users/%d/status"
USERS_PATH = "/api/v5/users"
# Users per page of GET /api/v5/users (the PHP client's PaginationLimit: 20, 50, 100, 250), and the
# most pages read (100,000 users), so an answer whose totalPageCount never ends cannot loop for ever.
USERS_PAGE_LIMIT = 100
USERS_MAX_PAGES = 1000
# A module code goes into the URL path: only these characters, so it can never add a path segment
# or a query string.
_MODULE_CODE = re.compile(r"[A-Za-z0-9_-]+")

# A proxy in front of a sick CRM answers with a long HTML page; a title or a short excerpt is enough.
_SNIPPET = 200

# Refusals about the key, the account or the endpoint, never about what was sent: resending other
# calls cannot help, and setting the calls aside would be wrong. 404 and 405 on a route that exists
# mean the method is missing for this account (retailCRM answers 404 "API method not found" for an
# API version or a method the account does not have; PHP treats a 405 HTML page on a POST as "Account
# does not exist."). Callers that expect a 404 for a missing entity (get_integration_module) check
# for the API's own "Not found" first.
ACCOUNT_PROBLEM_STATUSES = frozenset({401, 403, 404, 405})
# errorMsg fragments (lowercase): retailCRM's own strings ("Wrong \"apiKey\" value.", "Access denied.",
# "Account does not exist.", "Telephony not enabled or not supports calls upload", "API method not
# found") and what `_parse` says for an HTML answer.
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


@dataclass(frozen=True)
class EventResult:
    not_exist_codes: tuple[str, ...]
    not_exist_users: tuple[str, ...]


@dataclass(frozen=True)
class UploadResult:
    # processedCallsCount; None when the answer has no readable count.
    processed: int | None
    duplicates: tuple[str, ...]


@dataclass(frozen=True)
class ManagerLookup:
    """The manager lookup's answer (details=1): `manager` only when the CRM names one (free, unless
    asked with ignore_status), `customer` when the CRM knows the number; either may be None."""
    manager: dict | None
    customer: dict | None


@dataclass(frozen=True)
class Credentials:
    scopes: tuple[str, ...]
    credentials: tuple[str, ...]
    site_access: str | None
    sites_available: tuple[str, ...]


class _Window:
    """A bucket of `size` tokens where each spent token comes back exactly `window` seconds later.

    A classic continuously refilling bucket lets 2x the budget through across the edge of a
    1-second window, which retailCRM answers with 503; returning each token one window after it
    was spent means no window ever sees more than `size` requests.
    """

    def __init__(self, rps: float):
        if rps <= 0:
            raise ValueError("rate must be positive, got %r" % rps)
        self.size = max(1, int(rps))
        # Requests we send one window apart can still arrive closer together (network jitter),
        # so each token returns a little late.
        self.window = self.size / rps + 0.05
        # Tokens only urgent callers may take; never all of them, or background work would stall.
        self.reserve = min(max(1, round(self.size * 0.2)), self.size - 1)
        self.spent: list[float] = []  # times tokens were taken, oldest first
        self.urgent_waiting = 0

    def free(self, now: float) -> int:
        while self.spent and self.spent[0] + self.window <= now:
            self.spent.pop(0)
        return self.size - len(self.spent)


class RateLimiter:
    """Token buckets shared by every client that uses one API key.

    `telephony` (for /api/v5/telephony/*) and `general` (everything else) follow retailCRM's two
    budgets. Urgent callers (call cards, routing) are never queued behind background uploads:
    non-urgent callers only take a token while more than a reserve remains and nobody urgent
    is waiting. Waiting happens in `sleep`, which is gevent's once the process is patched.
    """

    def __init__(self, telephony_rps: float, general_rps: float,
                 clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep):
        self._buckets = {TELEPHONY: _Window(telephony_rps), GENERAL: _Window(general_rps)}
        self._clock, self._sleep = clock, sleep
        self._lock = threading.Lock()

    @staticmethod
    def route_of(path_or_name: str) -> str:
        """`telephony`/`general`, given a bucket name or an API path."""
        if path_or_name in (TELEPHONY, GENERAL):
            return path_or_name
        return TELEPHONY if path_or_name.startswith("/api/v5/telephony/") else GENERAL

    def acquire(self, route: str, urgent: bool) -> None:
        bucket = self._buckets[self.route_of(route)]
        with self._lock:
            bucket.urgent_waiting += urgent
        try:
            while True:
                with self._lock:
                    wait = self._take(bucket, urgent)
                if wait is None:
                    return
                self._sleep(wait)
        finally:
            with self._lock:
                bucket.urgent_waiting -= urgent

    def try_acquire(self, route: str, urgent: bool) -> bool:
        """A token if one is free right now, without waiting (for what may simply be skipped)."""
        bucket = self._buckets[self.route_of(route)]
        with self._lock:
            return self._take(bucket, urgent, waiting_self=False) is None

    def _take(self, bucket: _Window, urgent: bool, waiting_self: bool = True) -> float | None:
        """Take a token (None), or say how long to wait for one. Call with the lock held."""
        now = self._clock()
        free = bucket.free(now)
        others_urgent = bucket.urgent_waiting - (urgent and waiting_self)
        if free > (0 if urgent else bucket.reserve) and (urgent or not others_urgent):
            bucket.spent.append(now)
            return None
        # The oldest token is the next to come back; 1 ms floor so a waiter blocked only by an
        # urgent caller yields instead of spinning.
        return max(bucket.spent[0] + bucket.window - now if bucket.spent else 0.0, 0.001)


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _strings(value: Any) -> tuple[str, ...]:
    """A list of scalars as strings; anything else (missing, null, an object) as nothing."""
    if not isinstance(value, list):
        return ()
    return tuple(str(v) for v in value if isinstance(v, (str, int)) and not isinstance(v, bool))


def _module_path(code: Any) -> str:
    if not isinstance(code, str) or not _MODULE_CODE.fullmatch(code):
        raise ValueError("a module code holds only letters, digits, '_' and '-', got %r" % (code,))
    return MODULE_PATH % code


def _transport_reason(exc: requests.RequestException) -> str:
    """Why a request failed, cause included. requests wraps the cause ("Connection refused", "Failed to
    resolve", a certificate error) at the end of a pool and URL preamble long enough that any cut of
    the whole text loses it: urllib3's MaxRetryError carries the cause as `reason`."""
    cause = exc.args[0] if exc.args else None
    reason = getattr(cause, "reason", None)
    text = str(reason if isinstance(reason, BaseException) else exc)
    # urllib3 1.x starts with the connection object's repr, which says nothing.
    text = re.sub(r"<[\w.]+ object at 0x[0-9a-fA-F]+>: ", "", text)
    if len(text) > 2 * _SNIPPET:
        # Head and tail: the cause is at the end.
        text = "%s ... %s" % (text[:_SNIPPET // 2], text[-_SNIPPET:])
    return text


def _html_summary(text: str) -> str:
    match = re.search(r"<title[^>]*>(.*?)</title>", text, re.IGNORECASE | re.DOTALL)
    summary = match.group(1) if match else re.sub(r"<[^>]+>", " ", text)
    return " ".join(summary.split())[:_SNIPPET]


class CrmClient:
    """retailCRM's API for one account: one HTTP session, one shared rate limiter."""

    def __init__(self, account: AccountConfig, delivery: DeliveryConfig, limiter: RateLimiter | None = None,
                 observe: Callable[[str, str, float], None] | None = None):
        self.account = account
        # Told (path, outcome, seconds) of every request: "ok" / "http_<status>" / "timeout" / "error".
        self._observe = observe
        self._delivery = delivery
        self._limiter = limiter or RateLimiter(delivery.telephony_rps, delivery.general_rps)
        self._session = requests.Session()
        # Cards go out concurrently: keep enough connections alive for a burst of ringing phones,
        # or each card beyond the default 10 pays a new TCP and TLS handshake.
        adapter = requests.adapters.HTTPAdapter(pool_connections=1, pool_maxsize=POOL_SIZE)
        self._session.mount("https://", adapter)
        self._session.mount("http://", adapter)
        self._session.verify = True
        # The header, never the apiKey parameter: query strings end up in proxy and access logs.
        self._session.headers.update({"X-API-KEY": account.api_key, "Accept": "application/json",
                                      "User-Agent": "fs-crm"})

    # --- public methods ------------------------------------------------------------------------

    def send_event(self, event: dict, urgent: bool = True) -> EventResult:
        """`urgent` events overtake history uploads in the rate limiter (ringing cards are)."""
        data = self._request("POST", EVENT_PATH, urgent=urgent, read_timeout=self._delivery.event_read_timeout,
                             form={"event": _dumps(event)})
        result = EventResult(_strings(data.get("notExistCodes")), _strings(data.get("notExistUsers")))
        call_id = event.get("callExternalId")
        if result.not_exist_codes:
            logger.warning("%s: call %s: the CRM knows no user with extension(s) %s; check the extension map",
                           self.account.name, call_id, ", ".join(result.not_exist_codes))
        if result.not_exist_users:
            logger.warning("%s: call %s: the CRM knows no user id(s) %s; check the extension map",
                           self.account.name, call_id, ", ".join(result.not_exist_users))
        return result

    def upload_calls(self, calls: list[dict]) -> UploadResult:
        if not calls or len(calls) > vocab.MAX_CALLS_PER_UPLOAD:
            raise ValueError("an upload holds 1 to %d calls, got %d" % (vocab.MAX_CALLS_PER_UPLOAD, len(calls)))
        data = self._request("POST", UPLOAD_PATH, urgent=False, read_timeout=self._delivery.upload_read_timeout,
                             form={"calls": _dumps(calls)})
        processed = data.get("processedCallsCount")
        if not (isinstance(processed, int) and not isinstance(processed, bool) and processed >= 0):
            if processed is not None:
                logger.warning("%s: cannot read processedCallsCount %s", self.account.name,
                               _dumps(processed)[:_SNIPPET])
            processed = None
        return UploadResult(processed, self._duplicates(data.get("duplicateCalls")))

    def credentials(self) -> Credentials:
        data = self._request("GET", CREDENTIALS_PATH, urgent=False, read_timeout=self._delivery.event_read_timeout)
        site_access = data.get("siteAccess")
        return Credentials(scopes=_strings(data.get("scopes")), credentials=_strings(data.get("credentials")),
                           site_access=site_access if isinstance(site_access, str) else None,
                           sites_available=_strings(data.get("sitesAvailable")))

    def responsible_manager(self, phone: str, timeout: float) -> dict | None:
        """The free manager responsible for this customer, or None; raises CrmError like the rest."""
        return self.manager_lookup(phone, timeout).manager

    def manager_lookup(self, phone: str, timeout: float, ignore_status: bool = False,
                       wait_for_budget: bool = True) -> ManagerLookup:
        """`GET /telephony/manager?details=1`: the customer's responsible manager and the customer.

        The CRM names the manager only when he is free in the CRM (logged in, status "free");
        `ignore_status` asks for him whatever his status (`ignoreStatus=1`). `timeout` bounds the
        whole call, waiting for the rate limiter included: a ringing caller cannot wait for a slow
        CRM (requests' own timeouts only bound each socket operation). Raises CrmError like the rest.
        Without `wait_for_budget` a lookup that would have to wait for the rate budget is not made
        (CrmUnavailable): for what is nice to have, like a caller-ID name, never worth a delay.
        """
        params = {"phone": phone, "details": "1"}
        if ignore_status:
            params["ignoreStatus"] = "1"  # PHP's NumericBoolean: 0/1
        if not wait_for_budget and not self._limiter.try_acquire(MANAGER_PATH, urgent=True):
            raise CrmUnavailable(self.account.name, "rate budget spent for now; not asked", path=MANAGER_PATH)
        deadline = gevent.Timeout(timeout)
        deadline.start()
        try:
            data = self._request("GET", MANAGER_PATH, urgent=True, read_timeout=timeout, params=params,
                                 budgeted=not wait_for_budget)
        except gevent.Timeout as exc:
            if exc is not deadline:
                raise
            raise CrmUnavailable(self.account.name, "no answer within %.1f s" % timeout, path=MANAGER_PATH) from None
        finally:
            deadline.close()
        manager, customer = data.get("manager"), data.get("customer")
        return ManagerLookup(manager if isinstance(manager, dict) and manager else None,
                             customer if isinstance(customer, dict) and customer else None)

    def create_task(self, task: dict) -> int | None:
        """`POST /api/v5/tasks/create` (form field `task`); the new task's id when the answer gives one."""
        data = self._request("POST", TASK_CREATE_PATH, urgent=False, read_timeout=self._delivery.event_read_timeout,
                             form={"task": _dumps(task)})
        task_id = data.get("id")
        return task_id if isinstance(task_id, int) and not isinstance(task_id, bool) else None

    def set_user_status(self, user_id: int, status: str) -> None:
        """`POST /api/v5/users/{id}/status` with form field status = free | busy | dinner | break."""
        if not isinstance(user_id, int) or isinstance(user_id, bool) or user_id < 1:
            raise ValueError("a CRM user id is a positive integer, got %r" % (user_id,))
        self._request("POST", USER_STATUS_PATH % user_id, urgent=False,
                      read_timeout=self._delivery.event_read_timeout, form={"status": status})

    def users(self) -> list[dict]:
        """Every CRM user (`GET /api/v5/users`, page by page), as the CRM gives them: id, active,
        firstName, lastName, ... (PHP Model/Entity/Users/User; no extension: those live in the
        module's additionalCodes). Needs the user_read scope."""
        users: list[dict] = []
        page = 1
        while True:
            data = self._request("GET", USERS_PATH, urgent=False, read_timeout=self._delivery.upload_read_timeout,
                                 params={"limit": str(USERS_PAGE_LIMIT), "page": str(page)})
            batch = data.get("users")
            if not isinstance(batch, list):
                raise CrmUnavailable(self.account.name, "answer without a users list", path=USERS_PATH)
            users.extend(user for user in batch if isinstance(user, dict))
            pagination = data.get("pagination")
            pages = pagination.get("totalPageCount") if isinstance(pagination, dict) else None
            if not batch or not isinstance(pages, int) or page >= min(pages, USERS_MAX_PAGES):
                return users
            page += 1

    def edit_integration_module(self, module: dict) -> dict:
        """Create or update the integration module `module["code"]`; returns the CRM's `info` remarks.

        `info` may hold notExistUsersIds / notExistSiteCodes; with nothing to say the CRM sends
        an empty JSON array, returned here as {}.
        """
        path = _module_path(module.get("code")) + "/edit"
        # A one-off write nobody is waiting on: the generous upload timeout, behind urgent work.
        data = self._request("POST", path, urgent=False, read_timeout=self._delivery.upload_read_timeout,
                             form={"integrationModule": _dumps(module)})
        info = data.get("info")
        return info if isinstance(info, dict) else {}

    def get_integration_module(self, code: str) -> dict | None:
        """The module as the CRM holds it, or None when the CRM has no module with this code."""
        path = _module_path(code)
        try:
            data = self._request("GET", path, urgent=False, read_timeout=self._delivery.event_read_timeout)
        except CrmRejected as exc:
            # Only the API's own JSON "Not found": a 404 HTML page means a wrong crm_url, not a missing module.
            if exc.status == 404 and exc.error_msg.strip().rstrip(".").lower() == "not found":
                return None
            raise
        module = data.get("integrationModule")
        if isinstance(module, str):
            # Seen in a peer's defensive parser: the module given as a JSON string.
            try:
                module = json.loads(module)
            except ValueError:
                module = None
        if not isinstance(module, dict):
            raise CrmUnavailable(self.account.name, "unreadable integrationModule: %s"
                                 % self._scrub(_dumps(data.get("integrationModule")))[:_SNIPPET], path=path)
        return module

    def close(self) -> None:
        self._session.close()

    # --- transport -----------------------------------------------------------------------------

    def _request(self, method: str, path: str, *, urgent: bool, read_timeout: float,
                 form: dict | None = None, params: dict | None = None, budgeted: bool = False) -> dict:
        if not budgeted:  # the caller took its token already (try_acquire)
            self._limiter.acquire(path, urgent)
        name = self.account.name
        started = time.monotonic()
        outcome = "error"
        try:
            # No redirects: requests would carry X-API-KEY to wherever a redirect points, and a
            # POST turned into a GET by a redirect would be silently lost.
            resp = self._session.request(method, self.account.crm_url + path, data=form, params=params,
                                         timeout=(min(self._delivery.connect_timeout, read_timeout), read_timeout),
                                         allow_redirects=False)
            body = resp.content.decode("utf-8", errors="replace")
            outcome = "ok" if resp.status_code < 300 else "http_%d" % resp.status_code
        except requests.Timeout as exc:
            outcome = "timeout"
            raise CrmUnavailable(name, "%s after %.1f s" % (type(exc).__name__, time.monotonic() - started),
                                 path=path) from None
        except requests.RequestException as exc:
            # from None: the requests exception holds the prepared request, API key header included.
            raise CrmUnavailable(name, "%s: %s" % (type(exc).__name__, self._scrub(_transport_reason(exc))),
                                 path=path) from None
        finally:
            if self._observe is not None:
                self._observe(path, outcome, time.monotonic() - started)
        logger.debug("%s: %s %s -> HTTP %s in %.0f ms", name, method, path, resp.status_code,
                     (time.monotonic() - started) * 1000)
        return self._parse(path, resp.status_code, resp.headers.get("Content-Type", ""), body,
                           resp.headers.get("Location"))

    def _parse(self, path: str, status: int, content_type: str, body: str, location: str | None) -> dict:
        name = self.account.name

        def fail(cls: type[CrmError], msg: str, errors: dict | list | None = None, **flags: bool) -> CrmError:
            logger.debug("%s: %s answered HTTP %s: %s", name, path, status, self._scrub(body[:_SNIPPET]))
            return cls(name, self._scrub(msg), status, errors, path, **flags)

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
            raise fail(cls, "unreadable answer: %r" % text[:_SNIPPET] if text else "empty answer")
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
            raise fail(CrmRejected, error_msg or "request refused (success: %s)" % _dumps(success)[:_SNIPPET],
                       errors, account_problem=errors is None)
        # success missing, null or "true" as a string: not a statement we can rely on either way.
        # Resending is safe (uploads deduplicate by externalId), so it is retryable.
        raise fail(CrmUnavailable, "answer without \"success\": true (success: %s)"
                   % ("missing" if "success" not in data else _dumps(success)[:_SNIPPET]), errors)

    def _duplicates(self, value: Any) -> tuple[str, ...]:
        """duplicateCalls as externalIds: documented as a list, its items' shape is not."""
        if value is None or value == []:
            return ()
        if isinstance(value, list):
            ids = [v if isinstance(v, str) else v.get("externalId") if isinstance(v, dict) else None for v in value]
            if all(isinstance(i, str) and i for i in ids):
                return tuple(ids)  # type: ignore[arg-type]
        logger.warning("%s: cannot read duplicateCalls %s; treating the batch as having no duplicates",
                       self.account.name, _dumps(value)[:_SNIPPET])
        return ()

    def _scrub(self, text: str) -> str:
        key = self.account.api_key
        return text.replace(key, "***") if key else text

"""The retailCRM HTTP boundary: the only importer of requests.

Every answer, and every way a request can fail, becomes either a result dataclass or one of two
domain errors: `CrmUnavailable` (try again later) or `CrmRejected` (retrying the same request
cannot help); fs_crm.crm.answers reads the answers, fs_crm.crm.ratelimit keeps the rate budgets.
Nothing from requests leaks out, and the API key never reaches a log line or an exception message.
"""

from __future__ import annotations

import json
import logging
import re
import time
from dataclasses import dataclass
from typing import Any, Callable

import gevent
import requests

from fs_crm import vocab
from fs_crm.config import AccountConfig, DeliveryConfig
from fs_crm.crm.answers import SNIPPET, CrmRejected, CrmUnavailable, compact_json, read_answer, scrubbed
from fs_crm.crm.answers import CrmError as CrmError  # importers take the errors from here, with the client
from fs_crm.crm.ratelimit import RateLimiter

logger = logging.getLogger(__name__)

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
    if len(text) > 2 * SNIPPET:
        # Head and tail: the cause is at the end.
        text = "%s ... %s" % (text[:SNIPPET // 2], text[-SNIPPET:])
    return text


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
                             form={"event": compact_json(event)})
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
                             form={"calls": compact_json(calls)})
        processed = data.get("processedCallsCount")
        if not (isinstance(processed, int) and not isinstance(processed, bool) and processed >= 0):
            if processed is not None:
                logger.warning("%s: cannot read processedCallsCount %s", self.account.name,
                               compact_json(processed)[:SNIPPET])
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
                             form={"task": compact_json(task)})
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
                             form={"integrationModule": compact_json(module)})
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
            shown = scrubbed(compact_json(data.get("integrationModule")), self.account.api_key)
            raise CrmUnavailable(self.account.name, "unreadable integrationModule: %s" % shown[:SNIPPET], path=path)
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
            reason = scrubbed(_transport_reason(exc), self.account.api_key)
            raise CrmUnavailable(name, "%s: %s" % (type(exc).__name__, reason), path=path) from None
        finally:
            if self._observe is not None:
                self._observe(path, outcome, time.monotonic() - started)
        logger.debug("%s: %s %s -> HTTP %s in %.0f ms", name, method, path, resp.status_code,
                     (time.monotonic() - started) * 1000)
        return read_answer(self.account, path, resp.status_code, resp.headers.get("Content-Type", ""), body,
                           resp.headers.get("Location"))

    # --- what an answer holds ------------------------------------------------------------------

    def _duplicates(self, value: Any) -> tuple[str, ...]:
        """duplicateCalls as externalIds: documented as a list, its items' shape is not."""
        if value is None or value == []:
            return ()
        if isinstance(value, list):
            ids = [v if isinstance(v, str) else v.get("externalId") if isinstance(v, dict) else None for v in value]
            if all(isinstance(i, str) and i for i in ids):
                return tuple(ids)  # type: ignore[arg-type]
        logger.warning("%s: cannot read duplicateCalls %s; treating the batch as having no duplicates",
                       self.account.name, compact_json(value)[:SNIPPET])
        return ()


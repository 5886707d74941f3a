"""A fake retailCRM over real HTTP on 127.0.0.1 (tests and `make demo`): validates like the real one, records, fails on command.

Where it is unsure what the real API accepts it accepts (and records, e.g. `extra_fields`), so a
test can still assert what fs-crm sends; where the official clients document an answer shape
(errors as a list or a map, `info: []`, a 2xx with `"success": "false"`, HTML pages, 404 "API method
not found", 405), `answer_next` gives exactly that shape.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping
from urllib.error import HTTPError, URLError
from urllib.parse import parse_qsl, urlencode
from urllib.request import urlopen

import bottle
import gevent
import gevent.event
from gevent.pywsgi import WSGIServer

from fs_crm import vocab
from fs_crm.sim import wait_for
from fs_crm.sim.config import EXTENSIONS
from fs_crm.web.server import NoDelayHandler

logger = logging.getLogger(__name__)

ALL_SCOPES = ("telephony_read", "telephony_write", "user_read", "user_write", "integration_read",
              "integration_write")
MODES = ("ok", "down", "html", "unavailable", "rate_limited", "stall")
TELEPHONY_LIMIT, GENERAL_LIMIT = 40, 10  # requests per any 1 s window, when enforced

_DATE = re.compile(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}")
_TASK_DATETIME = re.compile(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}")  # the PHP client's DateTime<'Y-m-d H:i'>
# The PHP client's Tasks\Task fields a request may set (id, createdAt, complete... are the CRM's own).
_TASK_FIELDS = {"text", "commentary", "datetime", "performerId", "customer", "order", "phone", "phoneSite"}
_SOURCE_FIELDS = {"source", "medium", "campaign", "keyword", "content"}  # Model/Entity/Source
_USER_STATUSES = ("free", "busy", "dinner", "break")  # Enum/Users/UserStatus
_EVENT_FIELDS = {"phone", "type", "codes", "userIds", "site", "hangupStatus", "externalPhone", "callExternalId",
                 "webAnalyticsData"}
_CALL_FIELDS = {"date", "type", "phone", "code", "userId", "result", "duration", "durationWaiting", "externalId",
                "recordUrl", "source", "externalPhone", "site", "clientId"}
# nginx's limit_req answers 503 with its stock page; what retailCRM's own limiter sends is unverified.
_NGINX_503 = ("<html>\r\n<head><title>503 Service Temporarily Unavailable</title></head>\r\n<body>\r\n"
              "<center><h1>503 Service Temporarily Unavailable</h1></center>\r\n<hr><center>nginx</center>\r\n"
              "</body>\r\n</html>\r\n")
_HTML_502 = ("<!DOCTYPE html><html><head><title>502 Bad Gateway</title></head>"
             "<body><h1>502 Bad Gateway</h1></body></html>")
_HTML_404 = ("<!DOCTYPE html><html><head><title>404 Not Found</title></head>"
             "<body><h1>Not Found</h1></body></html>")
_NGINX_405 = ("<html>\r\n<head><title>405 Not Allowed</title></head>\r\n<body>\r\n"
              "<center><h1>405 Not Allowed</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n")

# Answer shapes `answer_next` can give, each as an official client documents or tests it.
SHAPES = (
    "method_not_found",  # 404 {"success":false,"errorMsg":"API method not found"} (api-client-php issue #43)
    "method_not_allowed",  # 405 text/html: PHP's AccountNotFoundHandler reads it as "Account does not exist."
    "html",  # an HTML page instead of JSON (GO: a body starting with "<" is "Account does not exist.")
    "success_string_false",  # 200 {"success":"false","errorMsg":"Telephony not enabled..."} (PY tests)
    "errors_list",  # 400, errors as a list (GO error_test.go TestFailure_ApiErrorsSlice)
    "errors_map",  # 400, errors as a field -> message map (GO TestFailure_ApiErrorsMap)
    "info_list",  # 200 {"success":true,"info":[]}: an empty PHP array, not an object
)


class _Headers(dict):
    """Request headers with case-insensitive lookup (stored lower-case)."""

    def __getitem__(self, key: str) -> str:
        return super().__getitem__(key.lower())

    def get(self, key: str, default: Any = None) -> Any:  # type: ignore[override]
        return super().get(key.lower(), default)

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and super().__contains__(key.lower())


@dataclass
class Received:
    method: str
    path: str
    headers: _Headers
    form: dict[str, str]
    query: dict[str, str]
    received_at: float  # time.monotonic()
    status: int | None = None  # None while the answer is still being prepared (e.g. stalling)
    body: bytes = b""


@dataclass
class _Answer:
    status: int
    body: str
    content_type: str = "application/json"


def _json(status: int, payload: dict) -> _Answer:
    return _Answer(status, json.dumps(payload, ensure_ascii=False))


def _error(status: int, msg: str, errors: dict | None = None) -> _Answer:
    payload: dict[str, Any] = {"success": False, "errorMsg": msg}
    if errors:
        payload["errors"] = errors
    return _json(status, payload)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass
class _Failure:
    status: int
    body: str | None
    content_type: str


@dataclass
class _Canned:
    shape: str
    path: str | None  # only requests whose path starts with this; None: any request
    status: int | None


def _shaped(shape: str, path: str, status: int | None) -> _Answer:
    if shape == "method_not_found":
        return _json(status or 404, {"success": False, "errorMsg": "API method not found"})
    if shape == "method_not_allowed":
        return _Answer(status or 405, _NGINX_405, "text/html")
    if shape == "html":
        return _Answer(status or 404, _HTML_404, "text/html; charset=UTF-8")
    if shape == "success_string_false":
        # The Python client's mocks: the upload and the event each have their own message.
        msg = ("Telephony not enabled or not supports calls upload" if path.endswith("/calls/upload")
               else "Telephony not enabled")
        return _json(status or 200, {"success": "false", "errorMsg": msg})
    if shape == "errors_list":
        return _json(status or 400, {"success": False, "errorMsg": "Errors in the entity format",
                                     "errors": ["The phone of the first call is not valid."]})
    if shape == "errors_map":
        return _json(status or 400, {"success": False, "errorMsg": "Errors in the entity format",
                                     "errors": {"calls[0].code": "This value is not valid."}})
    if shape == "info_list":
        return _json(status or 200, {"success": True, "info": []})
    raise ValueError("unknown answer shape %r (known: %s)" % (shape, ", ".join(SHAPES)))


def customer(customer_id: int, first_name: str, last_name: str = "", phones: Iterable[str] = (), **more: Any) -> dict:
    """A customer as the manager lookup gives it with details=1 (PHP SerializedCustomer):
    id, externalId, firstName, lastName, patronymic, email, phones [{number}]."""
    out: dict[str, Any] = {"id": customer_id, "firstName": first_name}
    if last_name:
        out["lastName"] = last_name
    out.update(more)  # externalId, patronymic, email
    out["phones"] = [{"number": p} for p in phones]
    return out


def user(user_id: int, first_name: str = "", last_name: str = "", active: bool = True, **more: Any) -> dict:
    """A CRM user as GET /api/v5/users lists it (PHP Model/Entity/Users/User and UsersTest's fixture):
    id, createdAt, active, email, firstName, lastName, status, online, isAdmin, isManager, groups."""
    out: dict[str, Any] = {"id": user_id, "createdAt": "2024-01-15 09:00:00", "active": active,
                           "email": "user%d@shop.test" % user_id, "firstName": first_name or "User%d" % user_id}
    if last_name:
        out["lastName"] = last_name
    out.update({"status": "free", "online": active, "isAdmin": False, "isManager": True,
                "groups": [{"id": 25, "name": "Managers", "code": "manager"}]})
    out.update(more)
    return out


# The page sizes GET /api/v5/users takes (the PHP client's PaginationLimit).
_PAGE_LIMITS = (20, 50, 100, 250)


class FakeCrm:
    """One fake CRM serving any number of accounts (one per API key)."""

    def __init__(self, api_keys: Mapping[str, str] | None = None, known_codes: set[str] | None = None,
                 known_sites: set[str] | None = None, scopes: Iterable[str] = ALL_SCOPES,
                 enforce_rate_limit: bool = False, known_user_ids: set[int] | None = None,
                 users: Iterable[dict] | None = None):
        self.api_keys = dict(api_keys if api_keys is not None else {"test-key": "shop"})
        # CRM user id -> user (see `user()`), listed by GET /api/v5/users in id order. By default the
        # known_user_ids, else the simulated PBX's managers (fs_crm.sim.config.EXTENSIONS).
        if users is None:
            ids = known_user_ids if known_user_ids is not None else {int(uid) for uid in EXTENSIONS}
            users = [user(uid) for uid in ids]
        self.users: dict[int, dict] = {u["id"]: u for u in users}
        self.known_codes, self.known_sites = known_codes, known_sites
        self.known_user_ids = known_user_ids
        self.scopes = tuple(scopes)
        self.enforce_rate_limit = enforce_rate_limit
        self.requests: list[Received] = []
        self.events: list[dict] = []
        self.calls: list[dict] = []
        self.uploads: list[list[dict]] = []
        self.stall_seconds = 5.0
        self.reject_external_ids: set[str] = set()
        self.managers: dict[str, dict] = {}
        # phone -> customer (see `customer()`), given by the manager lookup with details=1.
        self.customers: dict[str, dict] = {}
        # CRM user id -> status (free, busy, dinner, break; "offline" for a user not logged in):
        # the manager lookup names a manager only when his is "free" (the default), unless asked
        # with ignoreStatus=1 (retailCRM's PBX integration guide).
        self.user_statuses: dict[int, str] = {}
        # POST users/{id}/status requests that succeeded, in order: {"account", "userId", "status"}.
        self.status_changes: list[dict] = []
        # account -> (changeUserStatusUrl, clientId, {user id: extension}): after a status change
        # made through the API the fake calls that URL back, as the CRM does for changes in its UI.
        # UNVERIFIED whether the real CRM calls back for changes made through the API; fs-crm must
        # not bounce it either way.
        self.status_callbacks: dict[str, tuple[str, str, dict[int, str]]] = {}
        self.status_callbacks_made: list[dict] = []
        # Tasks created (POST tasks/create), each the `task` JSON plus "account", "id" and "site".
        self.tasks: list[dict] = []
        # Fields the fake accepted without knowing them, e.g. "event.foo" or "calls[0].bar": the
        # real API's stance on unknown fields is undocumented, so they are recorded, not refused.
        self.extra_fields: list[str] = []
        # The next uploads store every call but answer processedCallsCount one too low.
        self.undercount_uploads = 0
        # Calls answered as processed (success true) but neither stored nor counted: a CRM losing them.
        self.silently_drop: set[str] = set()
        self.modules: dict[tuple[str, str], dict] = {}  # (account, module code) -> module as last sent
        self.manager_delay = 0.0
        self._mode, self._mode_status = "ok", None
        self._unstall = gevent.event.Event()  # set to release requests stalling right now
        self._failures: list[_Failure] = []
        self._canned: list[_Canned] = []
        self._accepted_ids: dict[str, set[str]] = {}  # account -> externalIds accepted so far
        self._arrivals: dict[str, list[float]] = {"telephony": [], "general": []}
        self._lock = threading.Lock()
        self._server: WSGIServer | None = None
        self.app = self._build_app()

    # --- lifecycle -----------------------------------------------------------------------------

    def start(self) -> FakeCrm:
        self._server = WSGIServer(("127.0.0.1", 0), self.app, log=None, handler_class=NoDelayHandler)
        self._server.start()
        logger.info("fake retailCRM listening on %s", self.url)
        return self

    def stop(self) -> None:
        self._release_stalled()
        if self._server is not None:
            self._server.stop(timeout=1)

    def __enter__(self) -> FakeCrm:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self._server is not None, "start() first"
        return self._server.server_port

    @property
    def url(self) -> str:
        return "http://127.0.0.1:%d" % self.port

    # --- fault injection -----------------------------------------------------------------------

    def set_mode(self, mode: str, status: int | None = None) -> None:
        """ok | down | html | unavailable | rate_limited | stall; `status` overrides html's 502 (e.g. 200)."""
        if mode not in MODES:
            raise ValueError("unknown mode %r (known: %s)" % (mode, ", ".join(MODES)))
        self._mode, self._mode_status = mode, status
        self._release_stalled()

    def _release_stalled(self) -> None:
        self._unstall.set()
        self._unstall = gevent.event.Event()

    def fail_next(self, n: int, status: int = 500, body: str | None = None,
                  content_type: str = "application/json") -> None:
        """The next n requests on telephony routes get this answer instead of being processed."""
        with self._lock:
            self._failures.extend(_Failure(status, body, content_type) for _ in range(n))

    def answer_next(self, shape: str, n: int = 1, path: str | None = None, status: int | None = None) -> None:
        """The next n requests (only those whose path starts with `path`, when given) get one of
        SHAPES instead of being processed; `status` overrides the shape's usual one."""
        _shaped(shape, path or "", status)  # unknown shapes fail here, not in the server
        with self._lock:
            self._canned.extend(_Canned(shape, path, status) for _ in range(n))

    def wait_for(self, predicate: Callable[[], Any], timeout: float = 10.0) -> bool:
        return wait_for(predicate, timeout)

    # --- HTTP ----------------------------------------------------------------------------------

    def _build_app(self) -> bottle.Bottle:
        app = bottle.Bottle()
        routes = [
            ("POST", "/api/v5/telephony/call/event", self._call_event),
            ("POST", "/api/v5/telephony/calls/upload", self._calls_upload),
            ("GET", "/api/v5/telephony/manager", self._manager),
            ("GET", "/api/credentials", self._credentials),
            ("POST", "/api/v5/integration-modules/<code>/edit", self._module_edit),
            ("GET", "/api/v5/integration-modules/<code>", self._module_get),
            ("POST", "/api/v5/tasks/create", self._task_create),
            ("POST", "/api/v5/users/<user_id>/status", self._user_status),
            ("GET", "/api/v5/users", self._users),
        ]
        for method, path, handler in routes:
            app.route(path, method, self._serving(handler))
        not_found = self._serving(lambda account, received: _error(404, "Not found"))
        app.route("/<path:path>", ["GET", "POST", "PUT", "PATCH", "DELETE"], not_found)
        app.route("/", ["GET", "POST", "PUT", "PATCH", "DELETE"], not_found)
        return app

    def _serving(self, handler: Callable[[str, Received], _Answer]) -> Callable[..., str]:
        def route(**_kwargs: Any) -> str:
            request = bottle.request
            raw = request.body.read()
            headers = _Headers((k.lower(), v) for k, v in request.headers.items())
            # retailCRM reads POST parameters from a form body only; a JSON body looks empty to it.
            form_encoded = headers.get("Content-Type", "").startswith("application/x-www-form-urlencoded")
            received = Received(
                method=request.method, path=request.path, headers=headers,
                form=dict(parse_qsl(raw.decode("utf-8", errors="replace"), keep_blank_values=True))
                if form_encoded else {},
                query=dict(parse_qsl(request.query_string, keep_blank_values=True)),
                received_at=time.monotonic(), body=raw)
            self.requests.append(received)
            answer = self._answer(handler, received)
            received.status = answer.status
            bottle.response.status = answer.status
            bottle.response.content_type = answer.content_type
            return answer.body
        return route

    def _answer(self, handler: Callable[[str, Received], _Answer], received: Received) -> _Answer:
        with self._lock:
            canned = next((c for c in self._canned if c.path is None or received.path.startswith(c.path)), None)
            if canned is not None:
                self._canned.remove(canned)
        if canned is not None:
            return _shaped(canned.shape, received.path, canned.status)
        telephony = received.path.startswith("/api/v5/telephony/")
        injected = self._injected(telephony)
        if injected is not None:
            return injected
        if self.enforce_rate_limit and not self._within_rate(telephony, received.received_at):
            return _Answer(503, _NGINX_503, "text/html")
        key = received.headers.get("X-API-KEY")
        if not key:
            return _error(403, '"apiKey" is missing.')
        account = self.api_keys.get(key)
        if account is None:
            return _error(403, 'Wrong "apiKey" value.')
        return handler(account, received)

    def _injected(self, telephony: bool) -> _Answer | None:
        with self._lock:
            failure = self._failures.pop(0) if telephony and self._failures else None
        if failure is not None:
            body = failure.body
            if body is None:
                body = _HTML_502 if "html" in failure.content_type else json.dumps(
                    {"success": False, "errorMsg": "Injected failure (HTTP %d)" % failure.status})
            return _Answer(failure.status, body, failure.content_type)
        mode = self._mode
        if mode == "down":
            return _error(500, "Internal Server Error")
        if mode == "html":
            return _Answer(self._mode_status or 502, _HTML_502, "text/html; charset=UTF-8")
        if mode == "unavailable":
            return _error(503, "Service temporary unavailable")
        if mode == "rate_limited":
            return _Answer(503, _NGINX_503, "text/html")
        if mode == "stall":
            # Leaving stall mode (or stopping) answers the stalled requests at once.
            self._unstall.wait(self.stall_seconds)
        return None

    def _within_rate(self, telephony: bool, now: float) -> bool:
        group, limit = ("telephony", TELEPHONY_LIMIT) if telephony else ("general", GENERAL_LIMIT)
        with self._lock:
            recent = [t for t in self._arrivals[group] if t > now - 1.0]
            if len(recent) >= limit:
                self._arrivals[group] = recent
                return False
            self._arrivals[group] = recent + [now]
            return True

    # --- routes --------------------------------------------------------------------------------

    def _json_field(self, received: Received, name: str) -> tuple[Any, _Answer | None]:
        if name not in received.form or not received.form[name].strip():
            return None, _error(400, "Parameter '%s' is missing" % name)
        try:
            return json.loads(received.form[name]), None
        except ValueError:
            return None, _error(400, "Errors in the entity format", {name: "This value is not valid JSON."})

    def _call_event(self, account: str, received: Received) -> _Answer:
        event, problem = self._json_field(received, "event")
        if problem:
            return problem
        if not isinstance(event, dict):
            return _error(400, "Errors in the entity format", {"event": "This value should be an object."})
        errors = self._event_errors(event)
        if errors:
            return _error(400, "Errors in the entity format", errors)
        with self._lock:
            self.events.append(dict(event, account=account))
        payload: dict[str, Any] = {"success": True}
        if self.known_codes is not None:
            unknown = [c for c in event.get("codes") or [] if c not in self.known_codes]
            if unknown:
                payload["notExistCodes"] = unknown
        if self.known_user_ids is not None:
            unknown_users = [u for u in event.get("userIds") or [] if u not in self.known_user_ids]
            if unknown_users:
                payload["notExistUsers"] = unknown_users
        return _json(200, payload)

    def _event_errors(self, event: dict) -> dict[str, str]:
        errors: dict[str, str] = {}
        with self._lock:
            self.extra_fields.extend("event.%s" % name for name in sorted(set(event) - _EVENT_FIELDS))
        if not isinstance(event.get("phone"), str) or not event["phone"].strip():
            errors["phone"] = "This value should not be blank."
        if event.get("type") not in vocab.EVENT_TYPES:
            errors["type"] = "The value you selected is not a valid choice."
        codes, user_ids = event.get("codes"), event.get("userIds")
        if codes is not None and not (isinstance(codes, list) and all(isinstance(c, str) and c for c in codes)):
            errors["codes"] = "This value should be a list of strings."
        if user_ids is not None and not (isinstance(user_ids, list) and all(_is_int(u) for u in user_ids)):
            errors["userIds"] = "This value should be a list of integers."
        # Neither codes nor userIds is accepted: the official Python client's tests send
        # {"phone", "type"} alone and the PHP model makes both optional (nobody gets a pop-up then).
        # hangupStatus is accepted on any type: the v3 Python and .NET clients send it on in/out
        # events too; only its value is checked.
        if "hangupStatus" in event and event["hangupStatus"] not in vocab.HANGUP_STATUSES:
            errors["hangupStatus"] = "The value you selected is not a valid choice."
        for name in ("externalPhone", "callExternalId"):
            if name in event and not isinstance(event[name], str):
                errors[name] = "This value should be of type string."
        if "site" in event:
            self._check_site(event["site"], "site", errors)
        return errors

    def _check_site(self, site: Any, key: str, errors: dict[str, str]) -> None:
        if not isinstance(site, str) or not site:
            errors[key] = "This value should be of type string."
        elif self.known_sites is not None and site not in self.known_sites:
            errors[key] = "Site with code %s not found" % site

    def _calls_upload(self, account: str, received: Received) -> _Answer:
        calls, problem = self._json_field(received, "calls")
        if problem:
            return problem
        if not isinstance(calls, list) or not calls:
            return _error(400, "Errors in the entity format", {"calls": "This value should be a non-empty list."})
        if len(calls) > vocab.MAX_CALLS_PER_UPLOAD:
            return _error(400, "Errors in the entity format",
                          {"calls": "This collection should contain %d elements or less." % vocab.MAX_CALLS_PER_UPLOAD})
        errors: dict[str, str] = {}
        for i, call in enumerate(calls):
            self._call_errors(i, call, errors)
        if errors:
            return _error(400, "Errors in the entity format", errors)
        with self._lock:
            seen = self._accepted_ids.setdefault(account, set())
            duplicates = []
            processed = 0
            for call in calls:
                if call["externalId"] in self.silently_drop:
                    continue
                if call["externalId"] in seen:
                    duplicates.append(call["externalId"])
                else:
                    seen.add(call["externalId"])
                    self.calls.append(call)
                    processed += 1
            self.uploads.append(calls)
            if self.undercount_uploads and processed:
                self.undercount_uploads -= 1
                processed -= 1
        return _json(200, {"success": True, "processedCallsCount": processed, "duplicateCalls": duplicates})

    def _call_errors(self, i: int, call: Any, errors: dict[str, str]) -> None:
        def bad(name: str, msg: str) -> None:
            errors["calls[%d][%s]" % (i, name)] = msg

        if not isinstance(call, dict):
            errors["calls[%d]" % i] = "This value should be an object."
            return
        with self._lock:
            self.extra_fields.extend("calls[%d].%s" % (i, name) for name in sorted(set(call) - _CALL_FIELDS))
        if not isinstance(call.get("date"), str) or not _DATE.fullmatch(call["date"]):
            bad("date", "This value is not a valid datetime (Y-m-d H:i:s).")
        if call.get("type") not in vocab.UPLOAD_TYPES:
            bad("type", "The value you selected is not a valid choice.")
        if not isinstance(call.get("phone"), str) or not call["phone"].strip():
            bad("phone", "This value should not be blank.")
        if call.get("result") not in vocab.UPLOAD_RESULTS:
            bad("result", "The value you selected is not a valid choice.")
        for name in ("duration", "durationWaiting"):
            if not _is_int(call.get(name)) or call[name] < 0:
                bad(name, "This value should be a non-negative integer.")
        if not isinstance(call.get("externalId"), str) or not call["externalId"]:
            bad("externalId", "This value should not be blank.")
        elif call["externalId"] in self.reject_external_ids:
            bad("phone", "This value is not valid (rejected on purpose by the fake).")
        for name in ("code", "externalPhone", "recordUrl"):
            if name in call and not isinstance(call[name], str):
                bad(name, "This value should be of type string.")
        if "userId" in call and not _is_int(call["userId"]):
            bad("userId", "This value should be of type integer.")
        if "site" in call:
            self._check_site(call["site"], "calls[%d][site]" % i, errors)
        if "source" in call:
            source = call["source"]
            if not isinstance(source, dict):
                bad("source", "This value should be an object.")
            else:
                for name, value in source.items():
                    if name not in _SOURCE_FIELDS:
                        with self._lock:
                            self.extra_fields.append("calls[%d].source.%s" % (i, name))
                    elif not isinstance(value, str):
                        errors["calls[%d][source][%s]" % (i, name)] = "This value should be of type string."

    def _task_create(self, account: str, received: Received) -> _Answer:
        task, problem = self._json_field(received, "task")
        if problem:
            return problem
        if not isinstance(task, dict):
            return _error(400, "Errors in the entity format", {"task": "This value should be an object."})
        with self._lock:
            self.extra_fields.extend("task.%s" % name for name in sorted(set(task) - _TASK_FIELDS))
        errors: dict[str, str] = {}
        if not isinstance(task.get("text"), str) or not task["text"].strip():
            errors["text"] = "This value should not be blank."
        # UNVERIFIED whether the real API defaults a missing performer; fs-crm always names one.
        performer = task.get("performerId")
        if not _is_int(performer):
            errors["performerId"] = "This value should be of type integer."
        elif self.known_user_ids is not None and performer not in self.known_user_ids:
            errors["performerId"] = "User with id %s not found" % performer
        if "datetime" in task and not (isinstance(task["datetime"], str) and _TASK_DATETIME.fullmatch(task["datetime"])):
            errors["datetime"] = "This value is not a valid datetime (Y-m-d H:i)."
        for name in ("commentary", "phone", "phoneSite"):
            if name in task and not isinstance(task[name], str):
                errors[name] = "This value should be of type string."
        if "customer" in task:
            customer = task["customer"]
            if not isinstance(customer, dict) or not (_is_int(customer.get("id"))
                                                      or isinstance(customer.get("externalId"), str)):
                errors["customer"] = "The customer needs an integer id or an externalId."
        if "site" in received.form:
            self._check_site(received.form["site"], "site", errors)
        if errors:
            return _error(400, "Errors in the entity format", errors)
        with self._lock:
            task_id = len(self.tasks) + 1
            self.tasks.append(dict(task, account=account, id=task_id, site=received.form.get("site")))
        return _json(200, {"success": True, "id": task_id})

    def _user_status(self, account: str, received: Received) -> _Answer:
        raw_id = received.path.split("/")[4]
        if not raw_id.isdigit() or (self.known_user_ids is not None and int(raw_id) not in self.known_user_ids):
            return _error(404, "Not found")
        status = received.form.get("status")
        if not status:
            return _error(400, "Parameter 'status' is missing")
        if status not in _USER_STATUSES:
            return _error(400, "Errors in the entity format", {"status": "The value you selected is not a valid choice."})
        user_id = int(raw_id)
        with self._lock:
            self.user_statuses[user_id] = status
            self.status_changes.append({"account": account, "userId": user_id, "status": status})
        callback = self.status_callbacks.get(account)
        if callback is not None:
            gevent.spawn(self._call_back_status, callback, user_id, status)
        return _json(200, {"success": True})

    def _users(self, account: str, received: Received) -> _Answer:
        """The users list, paginated like every retailCRM list: limit (20 by default), page from 1."""
        errors: dict[str, str] = {}
        raw_limit, raw_page = received.query.get("limit", "20"), received.query.get("page", "1")
        if not raw_limit.isdigit() or int(raw_limit) not in _PAGE_LIMITS:
            errors["limit"] = "The value you selected is not a valid choice."
        if not raw_page.isdigit() or int(raw_page) < 1:
            errors["page"] = "This value should be greater than or equal to 1."
        if errors:
            return _error(400, "Errors in the input parameters", errors)
        limit, page = int(raw_limit), int(raw_page)
        with self._lock:
            listed = [self.users[uid] for uid in sorted(self.users)]
        pages = max(1, -(-len(listed) // limit))
        return _json(200, {"success": True,
                           "pagination": {"limit": limit, "totalCount": len(listed), "currentPage": page,
                                          "totalPageCount": pages},
                           "users": listed[(page - 1) * limit:page * limit]})

    def _call_back_status(self, callback: tuple[str, str, dict[int, str]], user_id: int, status: str) -> None:
        url, client_id, codes = callback
        params = {"clientId": client_id, "userId": str(user_id), "code": codes.get(user_id, ""), "status": status}
        # fs-crm's only requests importer is its CRM client: the fake calls back with the stdlib.
        try:
            with urlopen("%s?%s" % (url, urlencode(params)), timeout=5) as answer:
                outcome: Any = answer.status
        except HTTPError as exc:
            outcome = exc.code
        except (URLError, OSError) as exc:
            outcome = repr(exc)
        with self._lock:
            self.status_callbacks_made.append(dict(params, outcome=outcome))

    def _manager(self, account: str, received: Received) -> _Answer:
        phone = received.query.get("phone", "")
        if not phone:
            return _error(400, "Parameter 'phone' is missing")
        if self.manager_delay:
            gevent.sleep(self.manager_delay)
        payload: dict[str, Any] = {"success": True}
        manager = self.managers.get(phone)
        ignore_status = received.query.get("ignoreStatus") == "1"
        if manager is not None and (ignore_status or self.user_statuses.get(manager.get("id"), "free") == "free"):
            payload["manager"] = manager
        # details=1 adds the customer and links (PHP ManagerResponse; an unknown number gets only
        # the "new" links). UNVERIFIED: what details=0 leaves out; here, both.
        if received.query.get("details") == "1":
            links = {"newOrderLink": "/orders/add?phone=%s" % phone,
                     "newCustomerLink": "/customers/add?phone=%s" % phone}
            found = self.customers.get(phone)
            if found is not None:
                payload["customer"] = found
                links["customerLink"] = "/customers/%s" % found.get("id")
            payload["links"] = links
        return _json(200, payload)

    def _module_edit(self, account: str, received: Received) -> _Answer:
        code = received.path.split("/")[4]
        module, problem = self._json_field(received, "integrationModule")
        if problem:
            return problem
        if not isinstance(module, dict):
            return _error(400, "Errors in the entity format", {"integrationModule": "This value should be an object."})
        errors = self._module_errors(code, module)
        if errors:
            return _error(400, "Errors in the entity format", errors)
        telephony = (module.get("integrations") or {}).get("telephony") or {}
        info: dict[str, list] = {}
        if self.known_user_ids is not None:
            unknown_users = [c["userId"] for c in telephony.get("additionalCodes") or []
                             if c["userId"] not in self.known_user_ids]
            if unknown_users:
                info["notExistUsersIds"] = unknown_users
        if self.known_sites is not None:
            unknown_sites = [p["siteCode"] for p in telephony.get("externalPhones") or []
                             if p["siteCode"] not in self.known_sites]
            if unknown_sites:
                info["notExistSiteCodes"] = unknown_sites
        with self._lock:
            created = (account, code) not in self.modules
            self.modules[(account, code)] = module
        # Like the real one: an empty JSON array, not an object, when there is nothing to report.
        return _json(201 if created else 200, {"success": True, "info": info or []})

    def _module_errors(self, code: str, module: dict) -> dict[str, str]:
        errors: dict[str, str] = {}
        if module.get("code") != code:
            errors["code"] = "The code in the body must match the code in the URL."
        for name in ("integrationCode", "name", "clientId", "baseUrl"):
            if not isinstance(module.get(name), str) or not module[name]:
                errors[name] = "This value should not be blank."
        for name in ("logo", "accountUrl"):
            if name in module and not isinstance(module[name], str):
                errors[name] = "This value should be of type string."
        if "active" in module and not isinstance(module["active"], bool):
            errors["active"] = "This value should be of type bool."
        integrations = module.get("integrations")
        if integrations is None:
            return errors
        telephony = integrations.get("telephony") if isinstance(integrations, dict) else None
        if not isinstance(telephony, dict):
            errors["integrations"] = "This value should hold a telephony object."
            return errors
        prefix = "integrations[telephony]"
        for name in ("allowEdit", "inputEventSupported", "outputEventSupported", "hangupEventSupported"):
            if name in telephony and not isinstance(telephony[name], bool):
                errors["%s[%s]" % (prefix, name)] = "This value should be of type bool."
        for name in ("makeCallUrl", "changeUserStatusUrl"):
            if name in telephony and not isinstance(telephony[name], str):
                errors["%s[%s]" % (prefix, name)] = "This value should be of type string."
        codes = telephony.get("additionalCodes", [])
        if not isinstance(codes, list):
            errors[prefix + "[additionalCodes]"] = "This value should be a list."
            codes = []
        for i, item in enumerate(codes):
            where = "%s[additionalCodes][%d]" % (prefix, i)
            if not isinstance(item, dict) or not _is_int(item.get("userId")):
                errors[where + "[userId]"] = "This value should be of type integer."
            if not isinstance(item, dict) or not isinstance(item.get("code"), str) or not item["code"]:
                errors[where + "[code]"] = "This value should be of type string."
        phones = telephony.get("externalPhones", [])
        if not isinstance(phones, list):
            errors[prefix + "[externalPhones]"] = "This value should be a list."
            phones = []
        for i, item in enumerate(phones):
            where = "%s[externalPhones][%d]" % (prefix, i)
            for name in ("siteCode", "externalPhone"):
                if not isinstance(item, dict) or not isinstance(item.get(name), str) or not item[name]:
                    errors["%s[%s]" % (where, name)] = "This value should be of type string."
        return errors

    def _module_get(self, account: str, received: Received) -> _Answer:
        code = received.path.split("/")[4]
        with self._lock:
            module = self.modules.get((account, code))
        if module is None:
            return _error(404, "Not found")
        # The real answer adds read-only flags and does not give clientId back.
        shown = {k: v for k, v in module.items() if k != "clientId"}
        return _json(200, {"success": True, "integrationModule": {"freeze": False, "native": False, **shown}})

    def _credentials(self, account: str, received: Received) -> _Answer:
        return _json(200, {
            "success": True, "scopes": list(self.scopes),
            "credentials": ["/api/telephony/call/event", "/api/telephony/calls/upload", "/api/telephony/manager",
                            "/api/integration-modules/{code}", "/api/integration-modules/{code}/edit"],
            "siteAccess": "access_full", "sitesAvailable": sorted(self.known_sites or ()),
        })


"""The fake retailCRM itself: the state it records and is set up with, its HTTP server and app, and
how a request is answered (canned shape, injected failure, rate limit, API key) before its route runs."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable, Iterable, Mapping
from urllib.parse import parse_qsl

import bottle
import gevent.event
from gevent.pywsgi import WSGIServer

from fs_crm.sim import wait_for
from fs_crm.sim.config import EXTENSIONS
from fs_crm.sim.fake_crm.exchange import Received, _Answer, _error, _Headers
from fs_crm.sim.fake_crm.faults import _NGINX_503, _Canned, _Failure, _Faults, _shaped
from fs_crm.sim.fake_crm.integration import ALL_SCOPES, _IntegrationRoutes
from fs_crm.sim.fake_crm.telephony import _TelephonyRoutes
from fs_crm.sim.fake_crm.users import _UserRoutes, user
from fs_crm.web.server import NoDelayHandler

logger = logging.getLogger(__name__)


class FakeCrm(_TelephonyRoutes, _UserRoutes, _IntegrationRoutes, _Faults):
    """One fake CRM serving any number of accounts (one per API key).

    The routes of each API group (telephony.py, users.py, integration.py) and the fault injection
    (faults.py) are mixins; the state they all use is set up here.
    """

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

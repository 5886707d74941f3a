"""The fake retailCRM's failure modes, set by the test: a whole-server mode (down, HTML, unavailable,
rate limited, stalling), the next n telephony requests failing, canned answer shapes, and its rate limit."""

from __future__ import annotations

import json
from dataclasses import dataclass

import gevent.event

from fs_crm.sim.fake_crm.exchange import _Answer, _error, _json

MODES = ("ok", "down", "html", "unavailable", "rate_limited", "stall")
TELEPHONY_LIMIT, GENERAL_LIMIT = 40, 10  # requests per any 1 s window, when enforced

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


class _Faults:
    """Fault injection, mixed into FakeCrm (server.py), whose __init__ holds the state it uses."""

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

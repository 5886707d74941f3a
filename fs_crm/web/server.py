"""fs-crm's own HTTP server: one Bottle app on `http.listen` (recordings now, CRM callbacks later).

The server faces the internet (the CRM's users fetch recordings from it), so it does two things
gevent's WSGIServer does not: it closes connections that do not send their request headers in time
or sit idle between requests, and it never logs a request line or query string, because recording
URLs carry the account's clientId in the query (gevent's own messages quote the raw request line).
"""

from __future__ import annotations

import json
import logging
import re
import socket
import traceback
from typing import Any, Callable

import bottle
import gevent
from gevent.pywsgi import WSGIHandler, WSGIServer

from fs_crm.config import HttpConfig

logger = logging.getLogger(__name__)

# From connecting (or from the first byte of a kept-alive connection's next request) to the end of
# the request headers. Without it a client that trickles header bytes (slowloris) holds a socket
# and a greenlet for ever.
HEADER_TIMEOUT = 10.0
# A kept-alive connection with no new request for this long is closed; a player seeking reuses its
# connection within seconds.
IDLE_TIMEOUT = 30.0
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH"})
_QUERY = re.compile(r"\?[^\s'\"]*")
_BAD_REQUEST = b"HTTP/1.1 400 Bad Request\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
_REQUEST_TIMEOUT = b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"


# The module logo the CRM shows (retailCRM wants SVG): a handset in a rounded square.
LOGO_SVG = """<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 64 64" width="64" height="64">
<rect width="64" height="64" rx="12" fill="#1f6feb"/>
<path fill="#fff" d="M22 14c2 0 3 1 4 3l3 7c1 2 0 3-1 4l-3 3c2 5 6 9 11 11l3-3c1-1 2-2 4-1l7 3c2 1 3 2 3 4v5
c0 3-2 5-5 5C30 55 9 34 9 19c0-3 2-5 5-5z"/>
</svg>
"""
# What the CRM's "personal account" link (accountUrl) opens: nothing secret, just what this is.
ACCOUNT_PAGE = """<!doctype html><html><head><meta charset="utf-8"><title>fs-crm</title></head>
<body><h1>fs-crm</h1><p>FreeSWITCH telephony for retailCRM: call cards, call history with recordings,
click-to-call and routing to the responsible manager. The PBX operator configures it in
<code>fs-crm.toml</code>.</p></body></html>
"""


def build_app(health: Callable[[], tuple[bool, dict]], *parts: bottle.Bottle) -> bottle.Bottle:
    """The root app: `/healthz` for load balancers and monitoring, the module's logo and account
    page (see fs_crm.crm.registration), plus each feature's routes."""
    app = bottle.Bottle()

    @app.get("/logo.svg")
    def logo():
        bottle.response.content_type = "image/svg+xml"
        bottle.response.set_header("Cache-Control", "public, max-age=86400")
        return LOGO_SVG

    @app.get("/")
    def account_page():
        bottle.response.content_type = "text/html; charset=utf-8"
        return ACCOUNT_PAGE

    @app.get("/healthz")
    def healthz():
        healthy, details = health()
        bottle.response.status = 200 if healthy else 503
        bottle.response.content_type = "application/json"
        bottle.response.set_header("Cache-Control", "no-store")
        return json.dumps(details, sort_keys=True)

    for part in parts:
        app.merge(part)
    return app


class NoDelayHandler(WSGIHandler):
    def __init__(self, sock: Any, address: Any, server: Any, rfile: Any = None):
        # gevent writes the status line and the body separately; with Nagle's algorithm and delayed
        # ACKs every small answer on a kept-alive connection (a player seeking) waits ~40 ms.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        super().__init__(sock, address, server, rfile)


class _HeaderTimeout(ValueError):
    """The request headers did not arrive in time (a ValueError: gevent then treats it as bad input)."""


class _Idle(Exception):
    """A kept-alive connection sent no new request in time."""


def redact(text: str) -> str:
    """`text` with every query string cut out, for anything gevent or an app writes to the error log."""
    return _QUERY.sub("?[query removed]", text)


class RedactedErrorLog:
    """The server's error log (and the apps' `wsgi.errors`): our logger, minus query strings."""

    def write(self, text: str) -> None:
        text = text.rstrip("\n")
        if text:
            logger.error("%s", redact(text))

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        pass


class GuardedHandler(NoDelayHandler):
    """gevent's handler with a header deadline and a keep-alive idle limit, whose own log lines
    name the client's address and the request method, never the request line."""

    server: GuardedServer
    _requests = 0
    _deadline: gevent.Timeout | None = None

    def read_requestline(self) -> str:
        # A line that fails to parse would otherwise leave the previous request's method and path.
        self.command = self.path = None
        try:
            if self._requests:
                with gevent.Timeout(self.server.idle_timeout, _Idle):
                    if not self.rfile.peek(1):  # the client closed its kept-alive connection
                        return ""
            self._requests += 1
            self._deadline = gevent.Timeout(self.server.header_timeout, _HeaderTimeout)
            self._deadline.start()
            return super().read_requestline()
        except _Idle:
            logger.debug("closing an idle HTTP connection from %s after %ss", self._client_ip(),
                         self.server.idle_timeout)
            return ""  # gevent ends the connection on an empty request line
        except _HeaderTimeout:
            self._cancel_deadline()
            logger.info("closing an HTTP connection from %s: no request line within %ss", self._client_ip(),
                        self.server.header_timeout)
            return ""

    def read_request(self, raw_requestline: str) -> bool:
        try:
            return super().read_request(raw_requestline)
        finally:
            self._cancel_deadline()  # the application's own time is not limited here

    def handle_one_request(self) -> Any:
        try:
            return super().handle_one_request()
        finally:
            self._cancel_deadline()  # a request line gevent refused before reading headers (414)

    def _cancel_deadline(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _client_ip(self) -> str:
        address = self.client_address
        return str(address[0] if isinstance(address, tuple) else address)

    def _method(self) -> str:
        return self.command if self.command in _METHODS else "unknown-method"

    def _handle_client_error(self, ex: BaseException) -> tuple[str, bytes]:
        if isinstance(ex, _HeaderTimeout):
            logger.info("closing an HTTP connection from %s: request headers not complete within %ss",
                        self._client_ip(), self.server.header_timeout)
            return "408", _REQUEST_TIMEOUT
        # gevent's message (and its traceback, printed to stderr for some errors) quotes the raw
        # request line, query string included: only the kind of error is logged.
        logger.warning("rejected a malformed HTTP request from %s (method %s, %s)", self._client_ip(),
                       self._method(), type(ex).__name__.lstrip("_"))
        return "400", _BAD_REQUEST

    def _log_error(self, t: Any, v: Any, tb: Any) -> None:
        # gevent hands unexpected errors to the hub, which prints them to stderr, not to our log.
        if issubclass(t, gevent.GreenletExit):
            return
        text = "".join(traceback.format_exception(t, v, tb)).rstrip("\n")
        logger.error("unexpected error answering a %s request from %s:\n%s", self._method(), self._client_ip(),
                     redact(text))

    def handle(self) -> None:
        try:
            super().handle()
        except OSError as exc:
            # gevent writes its 400/408/414 answers outside its own error handling: a client that has
            # already gone (reset) would otherwise end the greenlet with a traceback on stderr.
            logger.debug("HTTP client %s went away before its answer: %s", self._client_ip(), exc)


class GuardedServer(WSGIServer):
    def __init__(self, listener: Any, application: Any, *, header_timeout: float, idle_timeout: float):
        # log=None: gevent's access log line is the full request line, query string (clientId) and all.
        super().__init__(listener, application, log=None, error_log=RedactedErrorLog(),
                         handler_class=GuardedHandler)
        self.header_timeout = header_timeout
        self.idle_timeout = idle_timeout


class HttpServer:
    def __init__(self, config: HttpConfig, app: bottle.Bottle, *, header_timeout: float = HEADER_TIMEOUT,
                 idle_timeout: float = IDLE_TIMEOUT):
        self.server = GuardedServer((config.listen_host, config.listen_port), app,
                                    header_timeout=header_timeout, idle_timeout=idle_timeout)

    def start(self) -> None:
        self.server.start()
        logger.info("HTTP server listening on %s:%d", *self.server.address[:2])

    @property
    def port(self) -> int:
        return self.server.server_port

    def stop(self) -> None:
        self.server.stop(timeout=2.0)

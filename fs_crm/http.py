"""fs-crm's own HTTP server: one Bottle app on `http.listen` (recordings now, CRM callbacks later)."""

from __future__ import annotations

import json
import logging
import socket
from typing import Any, Callable

import bottle
from gevent.pywsgi import WSGIHandler, WSGIServer

from fs_crm.config import HttpConfig

logger = logging.getLogger(__name__)


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
    page (see fs_crm.registration), plus each feature's routes."""
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


class HttpServer:
    def __init__(self, config: HttpConfig, app: bottle.Bottle):
        # log=None: the access log would hold full query strings, and clientId is in them.
        self.server = WSGIServer((config.listen_host, config.listen_port), app, log=None, error_log=logger,
                                 handler_class=NoDelayHandler)

    def start(self) -> None:
        self.server.start()
        logger.info("HTTP server listening on %s:%d", *self.server.address[:2])

    @property
    def port(self) -> int:
        return self.server.server_port

    def stop(self) -> None:
        self.server.stop(timeout=2.0)

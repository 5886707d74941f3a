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


def build_app(health: Callable[[], tuple[bool, dict]], *parts: bottle.Bottle) -> bottle.Bottle:
    """The root app: `/healthz` for load balancers and monitoring, plus each feature's routes."""
    app = bottle.Bottle()

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

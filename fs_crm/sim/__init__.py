"""Simulated outside systems (FreeSWITCH over real ESL sockets, retailCRM over real HTTP) for tests and the demo."""

import socket
import time
from typing import Any, Callable

import gevent


def wait_for(predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.01) -> bool:
    """Poll until predicate() is true (True) or the timeout passes (False); never a bare sleep."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            return False
        gevent.sleep(interval)
    return True


def free_port() -> int:
    """A loopback port nobody listens on right now (for configs that must name their port)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]

"""Simulated outside systems (FreeSWITCH over real ESL sockets, retailCRM over real HTTP) for tests and the demo."""

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

"""Polling with a deadline: how fs-crm waits for a condition without a bare sleep."""

import time
from typing import Any, Callable

import gevent


def wait_for(predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.01) -> bool:
    """Poll until predicate() is true (True) or the timeout passes (False)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            return False
        gevent.sleep(interval)
    return True

"""Every greenlet of fs-crm starts here, named, so that a crash is never only printed by gevent.

gevent prints an unhandled exception and lets the greenlet die quietly: a dead history sender or
ESL reader would leave a daemon that looks alive and does nothing. The crash is logged with its
traceback and the call that owns the greenlet decides what follows (close the connection, stop
the service). The outbound socket server's per-call greenlets are gevent's own (StreamServer's
pool); their handler catches and logs everything itself.
"""

from __future__ import annotations

import logging
from typing import Any, Callable

import gevent
import gevent.pool

logger = logging.getLogger(__name__)


def spawn(name: str, func: Callable[..., Any], *args: Any,
          on_crash: Callable[[gevent.Greenlet], None] | None = None,
          pool: gevent.pool.Group | None = None, start: bool = True) -> gevent.Greenlet:
    """Start `func(*args)` in a greenlet called `name` (in `pool` if given). If it raises, the
    crash is logged, then `on_crash(greenlet)` decides what happens next. With start=False the
    caller starts it (e.g. into a full pool without waiting)."""
    greenlet = gevent.Greenlet(func, *args)
    greenlet.name = name
    greenlet.link_exception(lambda dead: _crashed(dead, on_crash))
    if start:
        if pool is not None:
            pool.start(greenlet)
        else:
            greenlet.start()
    return greenlet


def _crashed(greenlet: gevent.Greenlet, on_crash: Callable[[gevent.Greenlet], None] | None) -> None:
    logger.error("%s crashed: %r", greenlet.name, greenlet.exception, exc_info=greenlet.exc_info)
    if on_crash is not None:
        on_crash(greenlet)

"""`fs-crm run`: the daemon, from the state dir's lock (waiting as a standby while another instance
holds it) through systemd's notifications to a clean stop on SIGTERM or SIGINT."""

import argparse
import logging
import signal
import sys

import gevent
import gevent.event

from fs_crm import sdnotify
from fs_crm.cli.startup import configure
from fs_crm.filemodes import private_dir
from fs_crm.greenlets import spawn
from fs_crm.store.lock import StateLock, StateLockError
from fs_crm.store.outbox import OutboxError

# "fs_crm", as the command line has always logged, not this module's name.
logger = logging.getLogger("fs_crm")

# A standby looks at the state dir's lock this often, so it takes over within a second.
STANDBY_POLL = 0.5


def cmd_run(args: argparse.Namespace) -> int:
    from fs_crm.service import Service, StartupError

    config = configure(args)
    # One set of handlers for the whole run: a SIGTERM that arrives while waiting as a standby, or
    # while the service is being built, must stop fs-crm cleanly rather than kill it.
    stop_requested = gevent.event.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        gevent.signal_handler(signum, stop_requested.set)
    try:
        private_dir(config.state.dir)
        lock = StateLock(config.state.dir)
        if not _wait_for_lock(lock, stop_requested):
            return 0
    except (OSError, StateLockError) as exc:
        from fs_crm.preflight import os_problem

        why = os_problem(exc, config.state.dir) if isinstance(exc, OSError) else exc
        print("fs-crm: %s: [state] dir %s: %s" % (config.path, config.state.dir, why), file=sys.stderr)
        return 1
    try:
        try:
            service = Service(config)
        except (OutboxError, OSError, ValueError) as exc:  # the outbox, the URL secret file
            logger.debug("cannot build the service", exc_info=True)
            print("fs-crm: %s: cannot start: %s" % (config.path, exc), file=sys.stderr)
            return 1

        def stop_when_told() -> None:
            stop_requested.wait()
            sdnotify.notify("STOPPING=1")
            service.request_stop()

        watchers = [spawn("sd-notify-ready", _notify_ready, service), spawn("stop-on-signal", stop_when_told)]
        try:
            return service.run_forever()
        except StartupError as exc:
            print("fs-crm: %s" % exc, file=sys.stderr)
            service.stop()
            return 1
        finally:
            gevent.killall(watchers, block=False)
    finally:
        lock.release()


def _notify_ready(service) -> None:
    """systemd (Type=notify) counts the service as started once its ports listen (Service.start)."""
    service.started.wait()
    sdnotify.notify("READY=1", "STATUS=active; HTTP on %s:%d" % (service.config.http.listen_host, service.http.port))


def _wait_for_lock(lock: StateLock, stop: gevent.event.Event) -> bool:
    """Become the active instance, waiting as a standby while another one is; False if told to stop first."""
    if lock.try_acquire():
        return not stop.is_set()
    logger.warning("another fs-crm is active on this state dir (%s, lock %s): this one waits as a standby and "
                   "takes over when it stops", lock.holder(), lock.path)
    # Started as far as systemd is concerned: a standby may wait for ever.
    sdnotify.notify("READY=1", "STATUS=standby: %s holds the state dir; takes over when it stops" % lock.holder())
    while not lock.try_acquire():
        if stop.wait(timeout=STANDBY_POLL):
            sdnotify.notify("STOPPING=1")
            logger.info("standby stopped before taking over")
            return False
    logger.warning("the state dir is free: this fs-crm is the active instance now")
    return True

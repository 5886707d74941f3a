"""`fs-crm playback`: serve recordings only, without the rest of the service."""

import argparse
import dataclasses
import logging
import signal
import sys

import gevent
import gevent.event

from fs_crm.cli.startup import configure

# "fs_crm", as the command line has always logged, not this module's name.
logger = logging.getLogger("fs_crm")


def cmd_playback(args: argparse.Namespace) -> int:
    """Serve recordings only, e.g. on more hosts behind a load balancer (horizontal scaling)."""
    from fs_crm.service import build_store
    from fs_crm.web.server import HttpServer, build_app
    from recordings.base import StorageError
    from recordings.playback import make_app
    from recordings.tokens import TokenCodec, load_secret

    config = configure(args)
    if not config.storage.backend:
        print("fs-crm playback: %s has no [storage] section: there are no recordings to serve" % config.path,
              file=sys.stderr)
        return 2
    try:
        codec = TokenCodec(load_secret(config.storage.url_secret, config.state.dir, create=False))
    except ValueError as exc:
        print("fs-crm playback: %s" % exc, file=sys.stderr)
        return 2
    store = build_store(config)
    try:
        store.check()
    except StorageError as exc:
        logger.warning("recording storage not usable yet (%s); answering 503 until it is", exc)

    def health() -> tuple[bool, dict]:
        try:
            store.check()
        except StorageError as exc:
            return False, {"storage": str(exc)}
        return True, {"storage": "ok"}

    http = config.http
    if args.listen:
        host, port = args.listen
        http = dataclasses.replace(http, listen_host=host, listen_port=port)
    server = HttpServer(http, build_app(health, make_app(store, codec, {a.name: a.client_id
                                                                            for a in config.accounts})))
    try:
        server.start()
    except OSError as exc:
        from fs_crm.preflight import listen_problem

        print("fs-crm playback: %s: %s %s:%d: cannot listen: %s" % (
            config.path, "--listen" if args.listen else "[http] listen", http.listen_host, http.listen_port,
            listen_problem(exc)), file=sys.stderr)
        return 1
    stop = gevent.event.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        gevent.signal_handler(signum, stop.set)
    stop.wait()
    server.stop()
    return 0

"""Command line: `fs-crm run | check | outbox | demo`."""

# gevent must patch the standard library before requests, sqlite users or sockets are imported.
from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import datetime as dt  # noqa: E402
import logging  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402

import gevent  # noqa: E402
import gevent.event  # noqa: E402

from fs_crm.config import Config, ConfigError, load_config  # noqa: E402
from fs_crm.filemodes import private_dir  # noqa: E402
from fs_crm.store.lock import StateLock, StateLockError  # noqa: E402

logger = logging.getLogger("fs_crm")

REQUIRED_SCOPES = ("telephony_read", "telephony_write")
# Needed by later features (module registration, user status); missing ones are warned about.
WANTED_SCOPES = ("integration_read", "integration_write", "user_read")
# A standby looks at the state dir's lock this often, so it takes over within a second.
STANDBY_POLL = 0.5


def _setup_logging(level: str) -> None:
    logging.basicConfig(level=getattr(logging, level), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # urllib3 logs full URLs at DEBUG; they carry no key (it travels in a header) but are noise.
    logging.getLogger("urllib3").setLevel(logging.WARNING)


def _load(args: argparse.Namespace) -> Config:
    config = load_config(args.config)
    _setup_logging(args.log_level or config.log_level)
    return config


def cmd_run(args: argparse.Namespace) -> int:
    from fs_crm.service import Service, StartupError

    config = _load(args)
    try:
        private_dir(config.state.dir)
        lock = StateLock(config.state.dir)
        if not _wait_for_lock(lock):
            return 0
    except (OSError, StateLockError) as exc:
        print("fs-crm: %s: [state] dir: %s" % (config.path, exc), file=sys.stderr)
        return 1
    try:
        service = Service(config)
        for signum in (signal.SIGTERM, signal.SIGINT):
            gevent.signal_handler(signum, service.request_stop)
        try:
            return service.run_forever()
        except StartupError as exc:
            print("fs-crm: %s" % exc, file=sys.stderr)
            service.stop()
            return 1
    finally:
        lock.release()


def _wait_for_lock(lock: StateLock) -> bool:
    """Become the active instance, waiting as a standby while another one is; False if told to stop first."""
    if lock.try_acquire():
        return True
    logger.warning("another fs-crm is active on this state dir (%s, lock %s): this one waits as a standby and "
                   "takes over when it stops", lock.holder(), lock.path)
    stop = gevent.event.Event()
    handlers = [gevent.signal_handler(signum, stop.set) for signum in (signal.SIGTERM, signal.SIGINT)]
    try:
        while not lock.try_acquire():
            if stop.wait(timeout=STANDBY_POLL):
                logger.info("standby stopped before taking over")
                return False
    finally:
        for handler in handlers:
            handler.cancel()
    logger.warning("the state dir is free: this fs-crm is the active instance now")
    return True


def cmd_check(args: argparse.Namespace) -> int:
    from fs_crm.crm import CrmClient, CrmError
    from fs_crm.esl import EslConnection
    from fs_crm.eslsession import EslError

    config = _load(args)
    ok = True
    print("config %s: OK (%d account(s))" % (config.path, len(config.accounts)))
    fs = config.freeswitch
    conn = EslConnection(fs, lambda event: None)
    try:
        conn.connect()
        version = conn.api("version").strip()
        print("FreeSWITCH %s:%s: OK, authenticated (%s)" % (fs.host, fs.port, version or "version unknown"))
    except EslError as exc:
        ok = False
        print("FreeSWITCH %s:%s: FAILED: %s" % (fs.host, fs.port, exc))
    finally:
        conn.stop()
    if config.storage.backend:
        from fs_crm.service import build_store
        from recordings.base import StorageError

        where = config.storage.bucket or config.storage.directory
        try:
            build_store(config).check()
            print("recording storage (%s %s): OK" % (config.storage.backend, where))
        except StorageError as exc:
            ok = False
            print("recording storage (%s %s): FAILED: %s" % (config.storage.backend, where, exc))
    for account in config.accounts:
        client = CrmClient(account, config.delivery)
        try:
            creds = client.credentials()
        except CrmError as exc:
            ok = False
            print("account %s (%s): FAILED: %s" % (account.name, account.crm_url, exc))
            continue
        finally:
            client.close()
        granted = set(creds.scopes)
        legacy = " ".join(creds.credentials)
        missing = [s for s in REQUIRED_SCOPES if s not in granted]
        if missing and "/telephony/" in legacy and not creds.scopes:
            missing = []  # an old key described by method paths instead of scopes
        if missing:
            ok = False
            print("account %s (%s): FAILED: the API key lacks scopes %s" % (account.name, account.crm_url,
                                                                          ", ".join(missing)))
            continue
        sites = [site for site, _ in account.external_phones]
        blind = [s for s in sites if creds.site_access == "access_selective" and s not in creds.sites_available]
        wanted = [s for s in WANTED_SCOPES if s not in granted and creds.scopes]
        print("account %s (%s): OK, key valid with telephony scopes%s%s" % (
            account.name, account.crm_url,
            "; WARNING: no access to stores %s" % ", ".join(blind) if blind else "",
            "; note: scopes %s missing (needed for module registration and statuses)" % ", ".join(wanted)
            if wanted else ""))
    return 0 if ok else 1


def cmd_outbox(args: argparse.Namespace) -> int:
    from fs_crm.outbox import Outbox

    config = _load(args)
    path = config.state.dir / "outbox.sqlite3"
    if not path.exists():
        print("no outbox yet at %s (nothing was ever queued)" % path)
        return 0
    outbox = Outbox(path)
    try:
        if args.retry:
            count = outbox.retry_failed(args.account)
            print("requeued %d call(s) that had been set aside" % count)
        stats = outbox.stats()
        oldest = ("none" if stats.oldest_pending_at is None else
                  dt.datetime.fromtimestamp(stats.oldest_pending_at).isoformat(sep=" ", timespec="seconds"))
        print("pending: %d\nset aside (failed): %d\noldest pending: %s" % (stats.pending, stats.failed, oldest))
        for item in outbox.failed(limit=20):
            print("  failed %s account %s after %d attempt(s): %s" % (item.external_id, item.account,
                                                                     item.attempts, item.last_error))
    finally:
        outbox.close()
    return 0


def cmd_playback(args: argparse.Namespace) -> int:
    """Serve recordings only, e.g. on more hosts behind a load balancer (horizontal scaling)."""
    from fs_crm.http import HttpServer, build_app
    from fs_crm.service import build_store
    from recordings.base import StorageError
    from recordings.playback import make_app
    from recordings.tokens import TokenCodec, load_secret

    config = _load(args)
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
    server.start()
    stop = gevent.event.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        gevent.signal_handler(signum, stop.set)
    stop.wait()
    server.stop()
    return 0


def cmd_register(args: argparse.Namespace) -> int:
    """Create or update each account's telephony module in its CRM (or show / compare it)."""
    import json

    from fs_crm.crm import CrmClient, CrmError
    from fs_crm.registration import differences, info_problems, module_payload, public_url_warnings

    config = _load(args)
    accounts = config.accounts
    if args.account:
        accounts = tuple(a for a in config.accounts if a.name == args.account)
        if not accounts:
            print("fs-crm register: %s has no account %r (accounts: %s)" % (
                config.path, args.account, ", ".join(a.name for a in config.accounts)), file=sys.stderr)
            return 2
    for warning in public_url_warnings(config.http.public_url):
        print("WARNING: %s" % warning)
    ok = True
    for account in accounts:
        module = module_payload(account, config.http.public_url)
        where = "account %s (%s): module %s" % (account.name, account.crm_url, account.code)
        if args.dry_run:
            # The operator's own config, clientId included; the API key is not part of the module.
            print("%s: would send POST /api/v5/integration-modules/%s/edit with integrationModule =" % (
                where, account.code))
            print(json.dumps(module, indent=2, sort_keys=True, ensure_ascii=False))
            continue
        client = CrmClient(account, config.delivery)
        try:
            if args.check:
                actual = client.get_integration_module(account.code)
            else:
                info = client.edit_integration_module(module)
        except CrmError as exc:
            ok = False
            print("%s: FAILED: %s" % (where, exc))
            continue
        finally:
            client.close()
        if args.check:
            if actual is None:
                ok = False
                print("%s: NOT REGISTERED in the CRM (run fs-crm register)" % where)
                continue
            found = differences(module, actual)
            if found:
                ok = False
                print("%s: DIFFERS from the config (run fs-crm register):" % where)
                for line in found:
                    print("  - %s" % line)
            else:
                print("%s: matches the config" % where)
            continue
        tel = module["integrations"]["telephony"]
        print("%s: registered (active, %d extension(s), %d external number(s))" % (
            where, len(tel["additionalCodes"]), len(tel["externalPhones"])))
        for problem in info_problems(account.name, info):
            print("  WARNING: %s" % problem)
    return 0 if ok else 1


def cmd_demo(args: argparse.Namespace) -> int:
    from fs_crm.demo import run_demo

    _setup_logging(args.log_level or "WARNING")
    return run_demo()


def _host_port(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or int(port) > 65535:
        raise argparse.ArgumentTypeError("expected HOST:PORT, got %r" % text)
    return host.strip("[]"), int(port)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fs-crm", description="FreeSWITCH to retailCRM bridge")
    parser.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"], help="override [logging] level")
    sub = parser.add_subparsers(dest="command", required=True)

    def with_config(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("-c", "--config", required=True, help="path to the TOML config file")
        return p

    with_config(sub.add_parser("run", help="run the daemon")).set_defaults(func=cmd_run)
    with_config(sub.add_parser("check", help="check config, FreeSWITCH and CRM keys")).set_defaults(func=cmd_check)
    p = with_config(sub.add_parser("outbox", help="show the history queue"))
    p.add_argument("--retry", action="store_true", help="requeue calls that were set aside")
    p.add_argument("--account", help="with --retry: only this account")
    p.set_defaults(func=cmd_outbox)
    p = with_config(sub.add_parser("playback", help="serve call recordings only (scale playback out)"))
    p.add_argument("--listen", type=_host_port, help="HOST:PORT to listen on instead of [http] listen")
    p.set_defaults(func=cmd_playback)
    p = with_config(sub.add_parser("register", help="register or update the telephony module in each CRM"))
    p.add_argument("--account", help="only this account")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--dry-run", action="store_true", help="print the module that would be sent; send nothing")
    mode.add_argument("--check", action="store_true",
                      help="compare the module in the CRM with the config; exit 1 if missing or different")
    p.set_defaults(func=cmd_register)
    sub.add_parser("demo", help="run against a simulated FreeSWITCH and retailCRM").set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as exc:
        print("fs-crm: configuration error: %s" % exc, file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130

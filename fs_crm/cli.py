"""Command line: `fs-crm run | check | outbox | playback | register | backfill | init | demo`, and `--version`."""

# gevent must patch the standard library before requests, sqlite users or sockets are imported.
from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import importlib.metadata  # noqa: E402
import logging  # noqa: E402
import os  # noqa: E402
import select  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import TYPE_CHECKING  # noqa: E402

import gevent  # noqa: E402
import gevent.event  # noqa: E402

from fs_crm import sdnotify  # noqa: E402
from fs_crm.config import Config, ConfigError, load_config  # noqa: E402
from fs_crm.filemodes import private_dir  # noqa: E402
from fs_crm.greenlets import spawn  # noqa: E402
from fs_crm.logformat import formatter  # noqa: E402
from fs_crm.store.lock import StateLock, StateLockError  # noqa: E402
from fs_crm.store.outbox import OutboxError  # noqa: E402

if TYPE_CHECKING:
    from fs_crm.config import AccountConfig
    from fs_crm.crm.client import CrmClient

logger = logging.getLogger("fs_crm")

REQUIRED_SCOPES = ("telephony_read", "telephony_write")
# Needed by later features (module registration, user status); missing ones are warned about.
WANTED_SCOPES = ("integration_read", "integration_write", "user_read")
# A standby looks at the state dir's lock this often, so it takes over within a second.
STANDBY_POLL = 0.5


def _setup_logging(level: str, log_format: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter(log_format))
    logging.basicConfig(level=getattr(logging, level), handlers=[handler], force=True)
    # urllib3 logs full URLs at DEBUG; they carry no key (it travels in a header) but are noise.
    logging.getLogger("urllib3").setLevel(logging.WARNING)


def _load(args: argparse.Namespace) -> Config:
    config = load_config(args.config)
    _setup_logging(args.log_level or config.log_level, config.log_format)
    return config


def cmd_run(args: argparse.Namespace) -> int:
    from fs_crm.service import Service, StartupError

    config = _load(args)
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


def cmd_check(args: argparse.Namespace) -> int:
    """Online: offline checks, then FreeSWITCH, the storage and each account's key. --offline: the
    config, state dir, outbox, ports and local storage only (fs_crm.preflight), no network."""
    from fs_crm.crm.client import CrmClient
    from fs_crm.freeswitch.eslsession import EslError
    from fs_crm.freeswitch.listener import EslConnection
    from fs_crm.preflight import offline_checks

    config = _load(args)
    print("config %s: OK (%d account(s))" % (config.path, len(config.accounts)))
    checks = offline_checks(config, storage=args.offline)
    for check in checks:
        print(check.line())
    ok = not any(check.failed for check in checks)
    if args.offline:
        return 0 if ok else 1
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
            ok = _check_account(account, client) and ok
        finally:
            client.close()
    return 0 if ok else 1


def _check_account(account: "AccountConfig", client: "CrmClient") -> bool:
    """One account's lines of `fs-crm check`: its key and scopes, then its extension map against the
    CRM's users. False if either failed."""
    from fs_crm.crm.client import CrmError
    from fs_crm.crm.extension_map import compare

    where = "account %s (%s)" % (account.name, account.crm_url)
    try:
        creds = client.credentials()
    except CrmError as exc:
        print("%s: FAILED: %s" % (where, exc))
        return False
    granted = set(creds.scopes)
    legacy = " ".join(creds.credentials)
    missing = [s for s in REQUIRED_SCOPES if s not in granted]
    if missing and "/telephony/" in legacy and not creds.scopes:
        missing = []  # an old key described by method paths instead of scopes
    if missing:
        print("%s: FAILED: the API key lacks scopes %s" % (where, ", ".join(missing)))
        return False
    sites = [site for site, _ in account.external_phones]
    blind = [s for s in sites if creds.site_access == "access_selective" and s not in creds.sites_available]
    wanted = [s for s in WANTED_SCOPES if s not in granted and creds.scopes]
    print("%s: OK, key valid with telephony scopes%s%s" % (
        where,
        "; WARNING: no access to stores %s" % ", ".join(blind) if blind else "",
        "; note: scopes %s missing (needed for module registration and statuses)" % ", ".join(wanted)
        if wanted else ""))
    what = "%s [accounts.extensions]" % where
    if "user_read" not in granted if creds.scopes else "/users" not in legacy:
        print("%s: SKIPPED: the API key lacks user_read, so the map cannot be compared with the CRM's users"
              % what)
        return True
    try:
        users = client.users()
    except CrmError as exc:
        print("%s: FAILED: cannot read the CRM's users: %s" % (what, exc))
        return False
    report = compare(account.name, account.extensions, users)
    if report.failures:
        print("%s: FAILED: %s" % (what, "; ".join(report.failures + report.warnings)))
        return False
    print("%s: OK, %d extension(s), each a user of the CRM%s" % (
        what, len(account.extensions), "".join("; WARNING: %s" % w for w in report.warnings)))
    return True


def cmd_outbox(args: argparse.Namespace) -> int:
    from fs_crm.store import outbox_cli

    return outbox_cli.run(_load(args), args)


def cmd_playback(args: argparse.Namespace) -> int:
    """Serve recordings only, e.g. on more hosts behind a load balancer (horizontal scaling)."""
    from fs_crm.service import build_store
    from fs_crm.web.server import HttpServer, build_app
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


def cmd_register(args: argparse.Namespace) -> int:
    """Create or update each account's telephony module in its CRM (or show / compare it)."""
    import json

    from fs_crm.crm.client import CrmClient, CrmError
    from fs_crm.crm.registration import differences, info_problems, module_payload, public_url_warnings

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


def cmd_backfill(args: argparse.Namespace) -> int:
    """Queue the history of calls fs-crm never saw over ESL, rebuilt from the CDRs mod_json_cdr
    spooled while fs-crm was away (its err-log-dir). Calls the outbox already has, pending or
    delivered, are skipped, so running it twice queues nothing new."""
    import time
    from pathlib import Path

    from fs_crm.calls.cdr import CdrError, group_calls, missing_legs, parse_cdr, records_from_cdrs
    from fs_crm.store.history_queue import new_calls, recording_links
    from fs_crm.store.outbox import FILE_NAME, Outbox, OutboxError

    config = _load(args)
    directory = Path(args.dir)
    try:
        paths = sorted(path for path in directory.iterdir() if path.name.endswith(".cdr.json"))
    except NotADirectoryError:
        print("fs-crm backfill: %s is not a directory" % directory, file=sys.stderr)
        return 2
    except OSError as exc:
        print("fs-crm backfill: cannot read directory %s: %s" % (directory, exc.strerror or exc), file=sys.stderr)
        return 2
    legs, bad = [], 0
    for path in paths:
        try:
            legs.append(parse_cdr(path.read_bytes()))  # the line names the file
        except OSError as exc:
            bad += 1
            print("bad file %s: cannot read it: %s; skipped" % (path, exc.strerror or exc))
        except CdrError as exc:
            bad += 1
            print("bad file %s: %s; skipped" % (path, exc))
    records, incomplete, no_call = [], 0, 0
    for group in group_calls(legs):
        missing = missing_legs(group)
        if missing and not args.partial:
            incomplete += 1
            print("incomplete call %s: no CDR of leg(s) %s, which its legs name; not queued (run again once "
                  "they are in %s, or with --partial)" % (group[0].uuid, ", ".join(sorted(missing)), directory))
            continue
        found = records_from_cdrs(group, config.accounts)
        no_call += not found
        records.extend(found)
    added: list[bool] = []
    if records:
        config.state.dir.mkdir(parents=True, exist_ok=True)
        try:
            calls = new_calls(records, recording_links(config), time.time() + config.storage.max_wait)
            outbox = Outbox(config.state.dir / FILE_NAME)
            try:
                added = outbox.add_calls(calls)
            finally:
                outbox.close()
        except (OutboxError, OSError, ValueError) as exc:  # the outbox, or the recording URL secret
            print("fs-crm backfill: %s; nothing queued" % exc, file=sys.stderr)
            return 1
    for record, new in zip(records, added, strict=True):
        print("%s %s account %s: %s %s %s, talk %ss, waited %ss, %s" % (
            "queued" if new else "skipped (already queued or delivered)", record.external_id, record.account,
            record.type, record.result, record.code or "-", record.duration, record.duration_waiting, record.date))
    queued = sum(added)
    print("%d CDR file(s): %d call(s) queued, %d already known, %d incomplete, %d bad file(s); "
          "%d group(s) of legs made no CRM call (internal, or no account matches)" % (
              len(paths), queued, len(added) - queued, incomplete, bad, no_call))
    return 1 if bad or incomplete else 0


def cmd_init(args: argparse.Namespace) -> int:
    """Write the example config, the systemd unit and the FreeSWITCH snippets into DIR."""
    from fs_crm.conffiles import CONFIG_NAME, UNIT_NAME, ConfFilesMissing, write_conf

    directory = Path(args.dir)
    try:
        written = write_conf(directory, force=args.force)
    except ConfFilesMissing as exc:
        print("fs-crm init: %s" % exc, file=sys.stderr)
        return 1
    except OSError as exc:
        print("fs-crm init: cannot write %s: %s" % (exc.filename or directory, exc.strerror or exc), file=sys.stderr)
        return 1
    for item in written:
        print("%s %s%s" % (item.action, item.path, " (it exists; --force overwrites it)" if item.action == "kept" else ""))
    config = directory / CONFIG_NAME
    print("next: fill in %s (secrets go in the environment, see its comments), then run\n"
          "  fs-crm check --offline -c %s\n"
          "The comments at the top of %s say how to install it as a systemd service."
          % (config, config, directory / UNIT_NAME))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from fs_crm.demo import run_demo

    _setup_logging(args.log_level or "WARNING")
    return run_demo()


def _host_port(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or int(port) > 65535:
        raise argparse.ArgumentTypeError("expected HOST:PORT, got %r" % text)
    return host.strip("[]"), int(port)


def _version() -> str:
    try:
        return importlib.metadata.version("fs-crm")
    except importlib.metadata.PackageNotFoundError:  # run from a checkout that was never installed
        from fs_crm import __version__

        return __version__


def _stdout_gone() -> bool:
    """After a BrokenPipeError: True if stdout is a pipe whose reader has left (`fs-crm outbox | head -1`),
    not some socket. stdout then goes to /dev/null, so the interpreter's last flush cannot fail again."""
    try:
        fd = sys.stdout.fileno()
        poller = monkey.get_original("select", "poll")()  # gevent's select has no poll()
        poller.register(fd, select.POLLOUT)
        gone = any(events & select.POLLERR for _, events in poller.poll(0))
    except (OSError, ValueError):
        return False
    if gone:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, fd)
        os.close(devnull)
    return gone


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fs-crm", description="FreeSWITCH to retailCRM bridge")
    parser.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"], help="override [logging] level")
    parser.add_argument("--version", action="version", version="fs-crm %s" % _version())
    sub = parser.add_subparsers(dest="command", required=True)

    def with_config(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("-c", "--config", required=True, help="path to the TOML config file")
        return p

    with_config(sub.add_parser("run", help="run the daemon")).set_defaults(func=cmd_run)
    p = with_config(sub.add_parser("check", help="check config, state dir, ports, FreeSWITCH and CRM keys"))
    p.add_argument("--offline", action="store_true",
                   help="only what needs no network: config, state dir and outbox, listen ports, local storage")
    p.set_defaults(func=cmd_check)
    p = with_config(sub.add_parser("outbox", help="show the history queue"))
    p.add_argument("--retry", nargs="*", metavar="ID", help="requeue these set-aside calls (ids or externalIds; "
                   "with --all: every one)")
    p.add_argument("--all", action="store_true", help="with --retry: every set-aside call")
    p.add_argument("--account", help="with --retry --all: only this account")
    p.add_argument("--drop", nargs="+", metavar="ID", help="forget these set-aside calls for good")
    p.add_argument("--export", action="store_true", help="print the set-aside calls as JSON lines")
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
    p = with_config(sub.add_parser("backfill", help="queue the history of calls in mod_json_cdr's spooled CDRs"))
    p.add_argument("dir", help="directory of <uuid>.cdr.json files (mod_json_cdr's err-log-dir)")
    p.add_argument("--partial", action="store_true",
                   help="also queue calls some of whose legs have no CDR in the directory")
    p.set_defaults(func=cmd_backfill)
    p = sub.add_parser("init", help="write the example config, the systemd unit and the FreeSWITCH snippets")
    p.add_argument("dir", metavar="DIR", help="where to write them, e.g. /etc/fs-crm (created if missing)")
    p.add_argument("--force", action="store_true", help="overwrite files that exist")
    p.set_defaults(func=cmd_init)
    sub.add_parser("demo", help="run against a simulated FreeSWITCH and retailCRM").set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code = args.func(args)
        sys.stdout.flush()  # here, not at exit: a reader that went away is handled below
        return code
    except BrokenPipeError:
        if not _stdout_gone():
            raise
        return 141  # what a shell reports for a command ended by SIGPIPE, as `head` leaves it
    except ConfigError as exc:
        print("fs-crm: configuration error: %s" % exc, file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130

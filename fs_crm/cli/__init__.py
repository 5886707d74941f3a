"""Command line: `fs-crm run | check | outbox | playback | register | backfill | init | demo`, and `--version`.

This module patches the standard library, builds the parser and runs `main` (the console script);
the bigger subcommands have a module each beside it (`run`, `check`, `playback`, `register`,
`backfill`), the ones that only hand over (outbox, init, demo) are here."""

# gevent must patch the standard library before requests, sqlite users or sockets are imported.
from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import importlib.metadata  # noqa: E402
import os  # noqa: E402
import select  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

from fs_crm.cli.backfill import cmd_backfill  # noqa: E402
from fs_crm.cli.check import cmd_check  # noqa: E402
from fs_crm.cli.playback import cmd_playback  # noqa: E402
from fs_crm.cli.register import cmd_register  # noqa: E402
from fs_crm.cli.run import cmd_run  # noqa: E402
from fs_crm.cli.startup import configure, setup_logging  # noqa: E402
from fs_crm.config import ConfigError  # noqa: E402


def cmd_outbox(args: argparse.Namespace) -> int:
    from fs_crm.store import outbox_cli

    return outbox_cli.run(configure(args), args)


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

    setup_logging(args.log_level or "WARNING")
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

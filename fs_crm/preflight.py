"""`fs-crm check --offline`: what `fs-crm run` needs from this host, checked without the network.

The state dir (there or creatable, writable) and its outbox, the listen ports (free right now), the
local recordings directory. Nothing here talks to FreeSWITCH, the CRM or S3, and nothing is left
changed but a state dir or recordings directory created where none was, as `fs-crm run` would.
`fs-crm check` (online) prints the same lines before its own.
"""

from __future__ import annotations

import errno
import os
import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path

from fs_crm.config import AccountConfig, Config, looks_reversed
from fs_crm.filemodes import private_dir
from fs_crm.store.lock import StateLock
from fs_crm.store.outbox import FILE_NAME, OutboxError, probe

OK = "OK"
FAILED = "FAILED"
SKIPPED = "SKIPPED"


@dataclass(frozen=True)
class Check:
    what: str  # what was checked, and where: "[state] dir /var/lib/fs-crm"
    status: str  # OK | FAILED | SKIPPED
    detail: str = ""

    @property
    def failed(self) -> bool:
        return self.status == FAILED

    def line(self) -> str:
        if not self.detail:
            return "%s: %s" % (self.what, self.status)
        return "%s: %s%s %s" % (self.what, self.status, "," if self.status == OK else ":", self.detail)


def offline_checks(config: Config, *, storage: bool = True) -> list[Check]:
    """Every offline check, in the order start-up meets them. `storage=False` leaves the recording
    storage to the caller (the online check tries it for real, S3 included)."""
    state_dir = Path(config.state.dir)
    holder = StateLock(state_dir).active_holder() if state_dir.is_dir() else None
    checks = [check_state_dir(state_dir, holder)]
    if not checks[0].failed:
        checks.append(check_outbox(state_dir / FILE_NAME))
    checks.append(check_listen("[http] listen", config.http.listen_host, config.http.listen_port, holder))
    if config.routing.enabled:
        checks.append(check_listen("[routing] listen", config.routing.listen_host, config.routing.listen_port, holder))
    if storage and config.storage.backend:
        checks.append(check_storage(config))
    checks.extend(check_extension_map(account) for account in config.accounts if looks_reversed(account.extensions))
    return checks


def check_extension_map(account: AccountConfig) -> Check:
    """A warning only: offline, "100" = "1" may be a reversed map or a CRM whose user ids outgrew its
    extensions; `fs-crm check` asks the CRM which."""
    first_id, first_ext = account.extensions[0]
    return Check("[accounts %r] extensions" % account.name, OK,
                 "WARNING: every CRM user id is longer than its extension (\"%d\" = \"%s\"); the map is \"CRM user "
                 "id\" = \"extension\": if it is written the other way round, swap each pair (\"%s\" = \"%d\"). "
                 "`fs-crm check` compares it with the CRM's users" % (first_id, first_ext, first_ext, first_id))


def check_state_dir(path: Path, holder: str | None = None) -> Check:
    what = "[state] dir %s" % path
    existed = path.is_dir()
    if path.exists() and not existed:
        return Check(what, FAILED, "not a directory")
    if not existed:
        try:
            private_dir(path)  # 0700, parents too, exactly as `fs-crm run` creates it
        except OSError as exc:
            return Check(what, FAILED, "cannot be created: %s" % os_problem(exc, path))
    try:
        fd, scratch = tempfile.mkstemp(dir=path, prefix=".check-")
        os.close(fd)
        os.unlink(scratch)
    except OSError as exc:
        return Check(what, FAILED, "not writable: %s" % os_problem(exc, path))
    detail = "writable" if existed else "created (mode 0700)"
    if holder:
        detail += "; a running fs-crm holds it (%s)" % holder
    return Check(what, OK, detail)


def check_outbox(path: Path) -> Check:
    what = "outbox %s" % path
    try:
        return Check(what, OK, probe(path))
    except OutboxError as exc:
        return Check(what, FAILED, str(exc).removeprefix("%s: " % path))


def check_listen(key: str, host: str, port: int, holder: str | None = None) -> Check:
    """Can `host:port` be bound right now, as fs-crm's servers bind it?"""
    what = "%s %s" % (key, "[%s]:%d" % (host, port) if ":" in host else "%s:%d" % (host, port))
    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as sock:
            # As gevent's servers do: a port left in TIME_WAIT by the last run is not "in use".
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE and holder:
            # `fs-crm run` would not fail on it: it waits as the active one's standby, port and all.
            return Check(what, OK, "in use by the running fs-crm (%s holds the state dir); another `fs-crm run` "
                                   "waits as its standby" % holder)
        return Check(what, FAILED, listen_problem(exc))
    return Check(what, OK, "free" if port else "any free port (port 0)")


def listen_problem(exc: OSError) -> str:
    """Why a listening socket could not be bound, in an operator's words."""
    if isinstance(exc, socket.gaierror):
        return "cannot resolve the host: %s" % exc.strerror
    if exc.errno == errno.EADDRINUSE:
        return "in use (is fs-crm already running?)"
    if exc.errno == errno.EACCES:
        return "permission denied (a port below 1024 needs root or CAP_NET_BIND_SERVICE)"
    if exc.errno == errno.EADDRNOTAVAIL:
        return "this host has no such address"
    return exc.strerror or str(exc)


def check_storage(config: Config) -> Check:
    storage = config.storage
    if storage.backend == "s3":
        return Check("recording storage (s3 %s)" % storage.bucket, SKIPPED,
                     "not contacted offline (`fs-crm check` without --offline tries it)")
    from recordings.base import StorageError
    from recordings.local import LocalStore

    what = "recording storage (local %s)" % storage.directory
    try:
        LocalStore(storage.directory).check()  # creates a missing directory, as the first upload would
    except StorageError as exc:
        return Check(what, FAILED, str(exc))
    return Check(what, OK, "writable")


def os_problem(exc: OSError, path: Path) -> str:
    """strerror, and the path that failed when it is not `path` itself (mkdir of /var/lib/fs-crm
    fails on /var/lib, say)."""
    where = exc.filename if exc.filename and str(exc.filename) != str(path) else None
    return "%s%s" % (exc.strerror or exc, " (%s)" % where if where else "")

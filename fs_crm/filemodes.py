"""Permissions of what fs-crm creates on disk, whatever the umask it was started with.

The state directory holds the outbox (call history not yet delivered, with phone numbers) and the
recording URL secret: only the service's user may read it. Recordings are read by the playback
server and perhaps by the operator's backup or web server group, never by everyone.

Every mode is set with chmod after creation: os.mkdir and os.open apply the umask, so a umask of
0 would give 0777 directories, and a umask of 077 would hide recordings from the group.
"""

from __future__ import annotations

import os
from pathlib import Path

PRIVATE_DIR = 0o700
PRIVATE_FILE = 0o600
SHARED_DIR = 0o750
SHARED_FILE = 0o640


def make_dirs(path: Path | str, mode: int) -> None:
    """Create `path` and its missing parents; each directory created here gets exactly `mode`.
    Directories that already exist are left as they are."""
    path = Path(path)
    if path.is_dir():
        return
    if path.parent != path:
        make_dirs(path.parent, mode)
    try:
        os.mkdir(path, mode)
    except FileExistsError:
        if path.is_dir():  # created meanwhile by another thread or process, which sets its mode
            return
        raise
    os.chmod(path, mode)


def private_dir(path: Path | str) -> None:
    """The state directory: created if missing (parents too, also 0700), and 0700 even if it
    already existed with a wider mode."""
    make_dirs(path, PRIVATE_DIR)
    os.chmod(path, PRIVATE_DIR)


def open_new_file(path: Path | str, mode: int) -> int:
    """A file descriptor for writing `path` from scratch (created or truncated) whose mode is
    exactly `mode`, also when a leftover file of that name had another one."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
    try:
        os.fchmod(fd, mode)
    except BaseException:
        os.close(fd)
        raise
    return fd


def create_private_file(path: Path | str) -> None:
    """Make sure `path` exists with mode 0600, keeping its content if it exists. Call it before
    sqlite3 opens a database: SQLite creates its -wal and -shm files with the main file's mode."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, PRIVATE_FILE)
    try:
        os.fchmod(fd, PRIVATE_FILE)
    finally:
        os.close(fd)

"""One active fs-crm per state dir: an OS file lock (flock) that a standby waits for.

Two daemons on one config would both send every card (managers get each pop-up twice) and race on
the outbox. The lock lives in the state dir, so a second instance on shared storage (NFSv4, a
cluster filesystem that honours flock) waits as a standby and takes over the moment the active one
stops or dies: the kernel releases the lock with the process, kill -9 included.
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
from pathlib import Path

LOCK_NAME = "fs-crm.lock"


class StateLockError(Exception):
    """The lock file cannot be opened or locked for a reason other than another holder."""


class StateLock:
    def __init__(self, state_dir: Path):
        self.path = Path(state_dir) / LOCK_NAME
        self._fd: int | None = None

    def try_acquire(self) -> bool:
        """Take the lock if it is free; False while another process holds it."""
        if self._fd is not None:
            return True
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise StateLockError("%s: cannot open the lock file: %s" % (self.path, exc.strerror)) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                return False
            raise StateLockError("%s: cannot lock: %s" % (self.path, exc.strerror)) from None
        # Who holds it, for the standby's log line; the lock itself is the flock, not this text.
        os.ftruncate(fd, 0)
        os.write(fd, ("pid %d on %s\n" % (os.getpid(), socket.gethostname())).encode())
        self._fd = fd
        return True

    def holder(self) -> str:
        """What the active instance wrote into the lock file ("pid 123 on host"), or "unknown"."""
        try:
            return self.path.read_text(encoding="utf-8", errors="replace").strip() or "unknown"
        except OSError:
            return "unknown"

    def active_holder(self) -> str | None:
        """For `fs-crm check`: who holds the lock right now ("pid 123 on host"), None while nobody
        does. Only tries a shared lock for an instant, so the file and its text stay as they are."""
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return None  # no lock file yet (or unreadable): nobody we can see holds it
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                return self.holder()
            return None
        finally:
            os.close(fd)  # also drops the shared lock, if it was taken
        return None

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the flock
            self._fd = None

"""systemd's start-up notification (sd_notify): the only user of $NOTIFY_SOCKET.

Under `Type=notify` (conf/fs-crm.service) systemd counts fs-crm as started once it says READY=1,
which `fs-crm run` does when its ports listen, and shows STATUS= in `systemctl status`. Each
message is one datagram of newline-separated KEY=VALUE lines to the AF_UNIX socket that
$NOTIFY_SOCKET names; a name starting with "@" is in the abstract namespace. Without the variable
(not started by systemd, or another Type=) every call does nothing.
"""

from __future__ import annotations

import logging
import os
import socket
from typing import Mapping

logger = logging.getLogger(__name__)

ENV = "NOTIFY_SOCKET"


def notify(*fields: str, env: Mapping[str, str] | None = None) -> bool:
    """Send fields such as "READY=1" or "STATUS=..." to systemd; True if a datagram was sent.
    A socket that cannot be reached is logged, never raised: the service runs on without it."""
    name = (os.environ if env is None else env).get(ENV, "")
    if not name:
        return False
    if name.startswith("@"):
        address = "\0" + name[1:]
    elif name.startswith("/"):
        address = name
    else:
        # systemd 254+ may also name an AF_VSOCK address ("vsock:CID:PORT"), used for VMs only.
        logger.warning("%s=%r is not an AF_UNIX socket path; systemd is not told about start-up", ENV, name)
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall("\n".join(fields).encode("utf-8"))
    except OSError as exc:
        logger.warning("cannot notify systemd through %s=%s: %s", ENV, name, exc.strerror or exc)
        return False
    return True

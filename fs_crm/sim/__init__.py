"""Simulated outside systems (FreeSWITCH over real ESL sockets, retailCRM over real HTTP) for tests and the demo."""

import socket

from fs_crm.polling import wait_for

__all__ = ["free_port", "wait_for"]


def free_port() -> int:
    """A loopback port nobody listens on right now (for configs that must name their port)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]

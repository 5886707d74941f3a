"""The inbound role of the fake FreeSWITCH: a client that connected to its port, as to mod_event_socket's
port 8021."""

from __future__ import annotations

import logging
import socket
from typing import TYPE_CHECKING

from fs_crm.freeswitch.eslparse import FrameError
from fs_crm.sim.fake_freeswitch.protocol import GOODBYE
from fs_crm.sim.fake_freeswitch.session import _Listener
from fs_crm.vocab import AUTH_REQUEST, RUDE_REJECTION

if TYPE_CHECKING:
    from fs_crm.sim.fake_freeswitch.switch import FakeFreeswitch
    from fs_crm.sim.fake_freeswitch.wire import _Command

logger = logging.getLogger(__name__)

# listener_run() answers a client refused by apply-inbound-acl with this exact frame, then says goodbye.
RUDE_MESSAGE = b"Access Denied, go away.\n"


class _InboundConnection(_Listener):
    """A client that connected to the fake's port, like a client of mod_event_socket on 8021."""

    def __init__(self, fake: FakeFreeswitch, sock: socket.socket, number: int):
        super().__init__(fake, sock, number, session_uuid=None)

    def serve(self) -> None:
        try:
            if self.fake.rude_reject:
                # apply-inbound-acl refused the address: no auth/request, the rejection, then goodbye.
                self._send(b"Content-Type: %s\nContent-Length: %d\n\n%s"
                           % (RUDE_REJECTION.encode(), len(RUDE_MESSAGE), RUDE_MESSAGE))
                return
            self._send(("Content-Type: %s\n\n" % AUTH_REQUEST).encode())
            self._command_loop()
        except FrameError as exc:
            logger.warning("fake FreeSWITCH: client %s sent an unframeable command, closing: %s", self.number, exc)
        except OSError as exc:
            logger.debug("fake FreeSWITCH: client %s socket error: %s", self.number, exc)
        except Exception:
            logger.exception("fake FreeSWITCH: client %s handler failed", self.number)
        finally:
            self._close(GOODBYE, lock_timeout=5.0)  # listener_run() always says goodbye on the way out

    def _record(self, command: _Command) -> None:
        logger.debug("fake FreeSWITCH: client %s sent %r", self.number, command.line)
        self.fake.commands.append((self.number, command.line))

    def _connect(self) -> None:  # pragma: no cover - `connect` is only reachable with a session
        raise AssertionError("connect without a session")

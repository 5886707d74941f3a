"""`POST /cdr`: the CDR of every leg, from mod_json_cdr, for calls fs-crm never saw over ESL.

FreeSWITCH posts each leg's CDR when the leg ends (conf/freeswitch/json_cdr.conf.xml). A CDR is
on disk (the outbox's cdr_legs) before the 2xx, since mod_json_cdr forgets it after one. A call is
rebuilt once all its legs are in and the last one has settled for a few seconds, so a call the ESL
path is reporting right now is queued by that path first; calls the tracker knows (in progress,
or finished lately) are simply forgotten here, and the outbox skips any externalId it already has.
Only posts from FreeSWITCH's address with mod_json_cdr's basic-auth `cred` are accepted.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import ipaddress
import logging
import socket
import time
from collections.abc import Callable, Sequence

import bottle
import gevent.event

from fs_crm.calls import CallTracker
from fs_crm.calls.cdr import CdrError, CdrLeg, group_calls, missing_legs, parse_cdr, records_from_cdrs
from fs_crm.config import AccountConfig, CdrConfig
from fs_crm.crm.payloads import CallRecord
from fs_crm.store.outbox import NewCall, OutboxError

logger = logging.getLogger(__name__)

MAX_BODY = 4 * 1024 * 1024  # a CDR is tens of kB; mod_json_cdr's own limit is far above what one leg needs
# A call's CDRs are replayed once its newest one is this old: the ESL path (seconds) goes first.
SETTLE = 15.0
# A call whose other legs' CDRs never came (lost, or from before the spool was set up) goes with
# what it has after this long, with a warning.
PARTIAL_AFTER = 3600.0
CHECK_EVERY = 5.0


class CdrIntake:
    def __init__(self, config: CdrConfig, outbox, tracker: CallTracker, accounts: Sequence[AccountConfig],
                 new_call: Callable[[CallRecord], NewCall], on_queued: Callable[[], None], *,
                 clock: Callable[[], float] = time.time):
        self._config = config
        self._outbox = outbox
        self._tracker = tracker
        self._accounts = tuple(accounts)
        self._new_call = new_call
        self._on_queued = on_queued
        self._clock = clock
        self._expected = ("%s:%s" % (config.user, config.password or "")).encode()
        self._allowed = _addresses(config.allow)
        self._stop = gevent.event.Event()
        # The kept CDRs, parsed once (when posted, or at start): uuid -> (leg, received at).
        self._legs: dict[str, tuple[CdrLeg, float]] = {}
        self._settle, self._partial_after = SETTLE, PARTIAL_AFTER
        self._left_in_spool: set[str] = set()
        self.received = 0
        self.queued = 0

    def load(self) -> None:
        """Take back the CDRs kept before a restart."""
        for uuid, body, at in self._outbox.cdr_legs():
            try:
                self._legs[uuid] = (parse_cdr(body, "kept CDR %s" % uuid), at)
            except CdrError as exc:  # checked when posted; only a hand-edited database gets here
                logger.error("leg %s: kept CDR unreadable (%s); forgetting it", uuid, exc)
                self._outbox.queue_from_cdrs([], [uuid])
        if self._legs:
            logger.info("%d CDR(s) of calls not complete yet taken back", len(self._legs))

    # --- the endpoint ---------------------------------------------------------------------------
    def make_app(self) -> bottle.Bottle:
        app = bottle.Bottle()

        @app.post("/cdr")
        def cdr():
            status, text = self.receive(bottle.request)
            bottle.response.status = status
            bottle.response.content_type = "text/plain; charset=utf-8"
            if status == 401:
                bottle.response.set_header("WWW-Authenticate", 'Basic realm="fs-crm cdr"')
            return text + "\n"

        return app

    def receive(self, request: bottle.BaseRequest) -> tuple[int, str]:
        peer = request.environ.get("REMOTE_ADDR", "")
        if not self._allowed_peer(peer):
            logger.warning("POST /cdr from %s refused: not a FreeSWITCH address ([cdr] allow)", peer)
            return 403, "not allowed from this address"
        if not self._authorised(request.get_header("Authorization", "")):
            logger.warning("POST /cdr from %s refused: wrong or missing credentials (json_cdr.conf.xml cred must be "
                           "[cdr] user:password)", peer)
            return 401, "credentials required"
        length = request.content_length
        if length > MAX_BODY:
            return 413, "CDR larger than %d bytes" % MAX_BODY
        body = request.body.read(MAX_BODY + 1)
        try:
            leg = parse_cdr(body, "POST /cdr?uuid=%s" % _printable(request.query.get("uuid", "")))
        except CdrError as exc:
            logger.warning("POST /cdr from %s: unreadable CDR: %s", peer, exc)
            return 400, "unreadable CDR: %s" % exc
        try:
            self._outbox.add_cdr_leg(leg.uuid, body.decode("utf-8", "replace"))
        except OutboxError as exc:
            # Not kept, so not acknowledged: mod_json_cdr retries, then spools it for `fs-crm backfill`.
            logger.warning("leg %s: CDR not kept (%s); FreeSWITCH will retry or spool it", leg.uuid, exc)
            return 503, "cannot keep the CDR now"
        self._legs.setdefault(leg.uuid, (leg, self._clock()))
        self.received += 1
        return 200, "ok"

    def _allowed_peer(self, peer: str) -> bool:
        try:
            return ipaddress.ip_address(peer) in self._allowed
        except ValueError:
            return False

    def _authorised(self, header: str) -> bool:
        scheme, _, encoded = header.partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            given = base64.b64decode(encoded.strip(), validate=True)
        except (binascii.Error, ValueError):
            return False
        return hmac.compare_digest(given, self._expected)

    # --- replaying complete calls -----------------------------------------------------------------
    def run(self) -> None:
        while not self._stop.wait(timeout=CHECK_EVERY):
            try:
                self.process()
            except OutboxError as exc:
                logger.debug("CDRs wait, the outbox cannot be used: %s", exc)  # the saver reports the disk

    def stop(self) -> None:
        self._stop.set()

    def import_spool(self) -> int:
        """Take the CDRs mod_json_cdr spooled while fs-crm was away ([cdr] spool_dir): each is kept
        like a posted one, then its file removed. Returns how many were taken."""
        directory = self._config.spool_dir
        if directory is None:
            return 0
        try:
            paths = sorted(p for p in directory.iterdir() if p.name.endswith(".cdr.json"))
        except OSError as exc:
            logger.warning("[cdr] spool_dir %s cannot be read: %s", directory, exc.strerror or exc)
            return 0
        taken = 0
        for path in paths:
            if path.name in self._left_in_spool:
                continue
            try:
                body = path.read_bytes()
                leg = parse_cdr(body, str(path))
            except OSError as exc:
                logger.warning("spooled CDR %s cannot be read: %s; left there", path, exc.strerror or exc)
                continue
            except CdrError as exc:
                logger.warning("spooled CDR %s is unreadable (%s); left there", path, exc)
                continue
            self._outbox.add_cdr_leg(leg.uuid, body.decode("utf-8", "replace"))
            self._legs.setdefault(leg.uuid, (leg, self._clock()))
            taken += 1
            try:
                path.unlink()
            except OSError as exc:
                # Not taken again by this run; after a restart it would be, and the outbox skips the
                # call it already has. fs-crm's user needs write access to the spool dir.
                self._left_in_spool.add(path.name)
                logger.warning("spooled CDR %s kept but not removed: %s", path, exc.strerror or exc)
        if taken:
            logger.info("took %d CDR(s) FreeSWITCH spooled in %s while fs-crm was away", taken, directory)
        return taken

    def process(self) -> int:
        """Queue every call whose CDRs are complete and settled; returns how many were queued."""
        self.import_spool()
        now = self._clock()
        queued = 0
        for group in group_calls(leg for leg, _ in self._legs.values()):
            uuids = [leg.uuid for leg in group]
            if any(self._tracker.knows_leg(uuid) for uuid in uuids):
                self._forget([], uuids)  # the ESL path has (or had) this call
                continue
            newest = max(self._legs[uuid][1] for uuid in uuids)
            if now - newest < self._settle:
                continue
            missing = missing_legs(group)
            if missing and now - newest < self._partial_after:
                continue
            if missing:
                logger.warning("call %s: the CDRs of legs %s never came; reporting it with the %d legs there are",
                               group[0].uuid, ", ".join(sorted(missing)), len(group))
            records = records_from_cdrs(group, self._accounts)
            added = self._forget([self._new_call(r) for r in records], uuids)
            for record, new in zip(records, added, strict=True):
                if new:
                    queued += 1
                    logger.info("call %s account %s: queued from FreeSWITCH's CDRs (not seen over ESL): %s %s",
                                record.external_id, record.account, record.type, record.result)
        if queued:
            self.queued += queued
            self._on_queued()
        return queued

    def _forget(self, calls: list[NewCall], uuids: list[str]) -> list[bool]:
        added = self._outbox.queue_from_cdrs(calls, uuids)
        for uuid in uuids:
            self._legs.pop(uuid, None)
        return added


def _addresses(allow: Sequence[str]) -> set:
    """The allowed peers as IP addresses; a host name is resolved once, at start."""
    out = set()
    for entry in allow:
        try:
            out.add(ipaddress.ip_address(entry))
            continue
        except ValueError:
            pass
        try:
            infos = socket.getaddrinfo(entry, None)
        except OSError as exc:
            logger.warning("[cdr] allow: cannot resolve %r (%s); no CDR posts are accepted from it", entry, exc)
            continue
        out.update(ipaddress.ip_address(info[4][0]) for info in infos)
    if any(address.is_loopback for address in out):
        out.update({ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1")})
    return out


def _printable(text: str) -> str:
    return "".join(c if c.isprintable() else "?" for c in text)[:64]

"""Fixtures of the live tests: one real FreeSWITCH per test session (the test PBX of tests/live/pbx/)
with SIPp phones registered, and per test a fresh fs-crm Service plus fake retailCRM wired to it.

Without FreeSWITCH installed these tests are skipped with one line saying how to install it; with
FS_CRM_LIVE_TESTS=required (as .ci/run sets it) that skip is a failure instead.
"""

from __future__ import annotations

import contextlib
import gzip
import os
import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import gevent
import pytest

sys.path.insert(0, str(Path(__file__).parent))

from e2e import API_KEY  # noqa: E402
from pbx import INSTALL_HINT, EslClient, LivePbx, installed  # noqa: E402
from scenarios import ACCOUNT, EXTENSIONS  # noqa: E402
from sipp import Sipp  # noqa: E402

from fs_crm import vocab  # noqa: E402
from fs_crm.calls.legs import unique  # noqa: E402
from fs_crm.config import parse_config  # noqa: E402
from fs_crm.freeswitch.eslparse import parse_event_plain  # noqa: E402
from fs_crm.polling import wait_for  # noqa: E402
from fs_crm.service import Service  # noqa: E402
from fs_crm.sim.config import sim_config  # noqa: E402
from fs_crm.sim.fake_crm import FakeCrm  # noqa: E402
from fs_crm.sim.fake_freeswitch import load_capture  # noqa: E402

REQUIRED = os.environ.get("FS_CRM_LIVE_TESTS") == "required"
LIVE_CAPTURES = Path(__file__).resolve().parents[2] / "fs_crm" / "sim" / "captures" / "live"
# Set to 1 to refresh the committed captures (fs_crm/sim/captures/live/) from this run.
SAVE_CAPTURES = os.environ.get("FS_CRM_SAVE_CAPTURES") == "1"
# Each scenario's CDRs (mod_json_cdr, one file a leg) and the ESL stream of the same run, in
# fs_crm/sim/captures/cdr/<name>/: saved with the captures above, or alone with this set to 1.
CDR_CAPTURES = LIVE_CAPTURES.parent / "cdr"
SAVE_CDR_CAPTURES = SAVE_CAPTURES or os.environ.get("FS_CRM_SAVE_CDR_CAPTURES") == "1"


@dataclass
class Switch:
    pbx: LivePbx
    phones: Sipp


@pytest.fixture(scope="session")
def switch(tmp_path_factory):
    if not installed():
        message = "live tests need FreeSWITCH 1.11 and SIPp: %s" % INSTALL_HINT
        if REQUIRED:
            pytest.fail(message + " (FS_CRM_LIVE_TESTS=required)")
        pytest.skip(message)
    root = tmp_path_factory.mktemp("pbx")
    pbx = LivePbx(root)
    pbx.start()
    phones = Sipp(pbx, root / "sipp")
    try:
        phones.register_all()
        assert wait_for(lambda: pbx.api("show registrations").count("pbx.test") >= len(phones.phone_ports),
                        timeout=10), pbx.api("show registrations")
        yield Switch(pbx, phones)
    finally:
        phones.stop_all()
        pbx.stop()


class Recorder:
    """The raw ESL stream of one test, as a bare client receives it: saved as the scenario's capture."""

    def __init__(self, pbx: LivePbx):
        self.client = EslClient("127.0.0.1", pbx.ports.esl)
        self.client.send(vocab.subscribe_command())
        self._greenlet = gevent.spawn(self._read)

    def _read(self) -> None:
        with contextlib.suppress(OSError, ConnectionError):
            self.client.sock.settimeout(None)
            while True:
                self.client._read()

    def stop(self) -> bytes:
        self._greenlet.kill()
        self.client.close()
        return bytes(self.client.raw)


@dataclass
class Live:
    """One live test: the switch and its phones, fs-crm running against it, the fake CRM."""

    pbx: LivePbx
    phones: Sipp
    crm: FakeCrm
    service: Service
    recorder: Recorder
    capture_name: str | None = None

    def capture_as(self, name: str) -> None:
        self.capture_name = name

    def cards(self) -> list[tuple]:
        return [(e["type"], tuple(e["codes"]), e.get("hangupStatus")) for e in self.crm.events]

    def wait_history(self, count: int = 1, timeout: float = 30.0) -> list[dict]:
        assert self.crm.wait_for(lambda: len(self.crm.calls) >= count, timeout=timeout), (
            "the CRM got %d of %d calls; cards: %s" % (len(self.crm.calls), count, self.cards()))
        return self.crm.calls

    def wait_idle(self, timeout: float = 30.0) -> None:
        """Until FreeSWITCH has no channel left and fs-crm tracks no call."""
        assert wait_for(lambda: not self.pbx.channels(), timeout=timeout, interval=0.1), self.pbx.channels()
        assert wait_for(lambda: self.service.tracker.active_calls() == 0, timeout=timeout), (
            self.service.tracker.calls)


def save_cdrs(pbx: LivePbx, stream: Path, into: Path, timeout: float = 10.0) -> None:
    """The CDR of every leg the ESL stream saw created, with the stream, into `into`. FreeSWITCH
    writes a leg's CDR as the leg ends (it ends with a newline), so they are waited for a moment."""
    events = [parse_event_plain(body) for body in load_capture(stream)]
    legs = unique(event.get(vocab.H_UNIQUE_ID) for event in events if event.name == vocab.CHANNEL_CREATE)
    files = [pbx.cdr_spool / ("%s.cdr.json" % uuid) for uuid in legs]

    def written(path: Path) -> bool:
        return path.exists() and path.read_bytes().endswith(b"\n")

    wait_for(lambda: all(written(path) for path in files), timeout=timeout, interval=0.1)
    files = [path for path in files if written(path)]
    if not files:  # every leg died with FreeSWITCH (killed): none reported
        return
    shutil.rmtree(into, ignore_errors=True)
    into.mkdir(parents=True)
    for path in files:
        shutil.copy(path, into / path.name)
    # Compressed: the same stream is in fs_crm/sim/captures/live/ as text when both were refreshed.
    (into / "esl.txt.gz").write_bytes(gzip.compress(stream.read_bytes(), mtime=0))


def live_config(pbx: LivePbx, crm: FakeCrm, state_dir: Path, **account):
    table = sim_config("127.0.0.1", pbx.ports.esl, crm.url, state_dir, api_key=API_KEY,
                       storage={"backend": "local", "directory": str(state_dir / "stored-recordings")})
    table["routing"]["listen"] = "127.0.0.1:%d" % pbx.ports.router
    table["accounts"][0].update(dict(ACCOUNT, extensions=dict(EXTENSIONS)), **account)
    return parse_config("<live>", table, env={})


@pytest.fixture
def live(switch, tmp_path, request):
    assert wait_for(lambda: not switch.pbx.channels(), timeout=20, interval=0.1), (
        "a previous test left calls on the switch: %s" % switch.pbx.channels())
    crm = FakeCrm(api_keys={API_KEY: "shop"}, known_codes=set(EXTENSIONS.values()),
                  known_sites={"shop1", "shop2"}).start()
    state_dir = tmp_path / "state"
    account = getattr(request, "param", {}) or {}
    service = Service(live_config(switch.pbx, crm, state_dir, **account))
    recorder = Recorder(switch.pbx)
    service.start()
    test = Live(switch.pbx, switch.phones, crm, service, recorder)
    try:
        assert wait_for(lambda: service.listener.connected, timeout=10)
        yield test
    finally:
        switch.phones.stop_all()
        service.stop()
        crm.stop()
        raw = recorder.stop()
        name = test.capture_name or re.sub(r"\W+", "_", request.node.name)
        (tmp_path / ("%s.esl.txt" % name)).write_bytes(raw)
        if SAVE_CAPTURES and test.capture_name and raw:
            LIVE_CAPTURES.mkdir(parents=True, exist_ok=True)
            shutil.copy(tmp_path / ("%s.esl.txt" % name), LIVE_CAPTURES / ("%s.esl.txt" % name))
        if SAVE_CDR_CAPTURES and test.capture_name and raw:
            save_cdrs(switch.pbx, tmp_path / ("%s.esl.txt" % name), CDR_CAPTURES / name)

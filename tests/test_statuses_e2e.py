"""Users' statuses through FreeSWITCH restarts: the CRM's /change-status over real HTTP, the service,
and the fake FreeSWITCH's hash flags (`status_push = "hash"`), which a restarted FreeSWITCH has
forgotten."""

import gevent.event
import pytest
import requests
from e2e import config_table

from fs_crm.config import parse_config
from fs_crm.polling import wait_for
from fs_crm.service import Service
from fs_crm.sim import free_port
from fs_crm.sim.fake_freeswitch import FakeFreeswitch

USER_OF = {"100": "1", "200": "2", "300": "3"}   # the sim account's extension map
# The listener reconnects within reconnect_max_delay (0.5 s in the sim config); the pushes follow at once.
BACK_WITHIN = 3.0


def flag(extension: str) -> str:
    return "%s@pbx.test" % extension


class HashModule:
    """mod_hash's `hash insert/<realm>/<key>/<value>` as an api handler of the fake FreeSWITCH."""

    def __init__(self, fs: FakeFreeswitch):
        self.flags: dict[str, str] = {}
        self.inserts: list[tuple[str, str]] = []   # in the order FreeSWITCH ran them
        self.held: dict[str, gevent.event.Event] = {}  # key -> the insert waits for it (a slow answer)
        self.waiting: set[str] = set()
        fs.api_handlers["hash"] = self.api

    def api(self, args: str) -> str:
        action, realm, key, value = args.split("/", 3)
        assert (action, realm) == ("insert", "fs_crm_status")
        gate = self.held.get(key)
        if gate is not None:
            self.waiting.add(key)
            gate.wait(timeout=5)  # api runs inline: the whole command connection waits, as on FreeSWITCH
        self.flags[key] = value
        self.inserts.append((key, value))
        return "+OK\n"


@pytest.fixture
def service(fakes, tmp_path):
    fs, crm = fakes
    port = free_port()
    table = config_table(fs, crm, tmp_path / "state", http_port=port)
    table["accounts"][0]["status_push"] = "hash"
    hashes = HashModule(fs)
    svc = Service(parse_config("<e2e>", table, env={}))
    svc.start()
    try:
        assert fs.wait_subscribed(timeout=10)
        yield svc, port, hashes
    finally:
        svc.stop()


def change_status(port: int, extension: str, status: str) -> None:
    answer = requests.get("http://127.0.0.1:%d/change-status" % port, timeout=5, params={
        "clientId": "client-1", "userId": USER_OF[extension], "code": extension, "status": status})
    assert answer.status_code == 200, answer.text


def test_given_pushed_statuses_when_freeswitch_restarts_then_latest_status_of_each_extension_back_within_seconds(
        fakes, service):
    fs, _ = fakes
    svc, port, hashes = service
    for extension, status in (("100", "break"), ("200", "dinner"), ("100", "busy"), ("300", "free")):
        change_status(port, extension, status)
    latest = {flag("100"): "busy", flag("200"): "dinner", flag("300"): "free"}
    assert wait_for(lambda: hashes.flags == latest, timeout=5)

    fs.stop()  # "The system is being shut down." to every client, then nothing listens
    assert wait_for(lambda: not svc.listener.connected and not svc.commands.connected, timeout=5)
    restarted = FakeFreeswitch(port=fs.port)
    fresh = HashModule(restarted)  # a new FreeSWITCH process: no flags at all
    restarted.start()
    try:
        assert wait_for(lambda: fresh.flags == latest, timeout=BACK_WITHIN), fresh.inserts
        # The listener's reconnect pushed them; the new command connection found nothing left to send.
        assert sorted(fresh.inserts) == sorted(latest.items())
    finally:
        restarted.stop()


def test_given_push_after_reconnect_under_way_when_status_changes_then_older_value_never_lands_after_it(
        fakes, service):
    fs, _ = fakes
    svc, port, hashes = service
    for extension, status in (("100", "break"), ("200", "break"), ("300", "dinner")):
        change_status(port, extension, status)
    assert wait_for(lambda: len(hashes.flags) == 3, timeout=5)
    sent: list[str] = []
    api = svc.commands.api

    def spy(command, timeout=None):
        sent.append(command)
        return api(command, timeout)

    svc.commands.api = spy
    # FreeSWITCH drops both connections and comes back without its flags; it is slow to answer the
    # first re-push (extension 100), so the rest of the re-push waits behind it.
    gate = gevent.event.Event()
    hashes.held[flag("100")] = gate
    hashes.flags.clear()
    fs.drop_clients()
    assert wait_for(lambda: flag("100") in hashes.waiting, timeout=BACK_WITHIN)

    # Meanwhile the CRM says 200 is free again; that push goes out behind the slow one.
    change_status(port, "200", "free")
    assert wait_for(lambda: "hash insert/fs_crm_status/200@pbx.test/free" in sent, timeout=5)
    gate.set()

    # 300 comes after 200 in the re-push, so once it is back the re-push is past 200.
    assert wait_for(lambda: flag("300") in hashes.flags, timeout=5)
    assert hashes.flags == {flag("100"): "break", flag("200"): "free", flag("300"): "dinner"}
    assert [value for key, value in hashes.inserts[3:] if key == flag("200")] == ["free"]

"""The ESL session core in its three roles, through real sockets to the fake FreeSWITCH: a caller that
gives up does not cost the others their connection, the command lanes keep quick checks away from
listings, and an interrupted connect leaves nothing behind."""

import dataclasses
import logging
import time

import gevent
import gevent.event
import gevent.server
import pytest
from e2e import make_config

from fs_crm.config import RoutingConfig
from fs_crm.freeswitch import commands as commands_module
from fs_crm.freeswitch.commands import BULK, FAST, FreeswitchCommands, lane_of
from fs_crm.freeswitch.eslsession import EslTimeout, EslUnavailable
from fs_crm.freeswitch.listener import EslConnection
from fs_crm.freeswitch.outbound import OutboundServer, SessionTimeout
from fs_crm.sim import wait_for
from fs_crm.sim.fake_freeswitch import capture_path, frame_event, load_connect_reply, serialize_event

LOOPBACK = RoutingConfig(listen_host="127.0.0.1", listen_port=0)
VERSION = "FreeSWITCH Version 1.11.3-dev (fake_freeswitch)\n"


@pytest.fixture
def config(fakes, tmp_path):
    fs, crm = fakes
    return make_config(fs, crm, tmp_path / "state").freeswitch


@pytest.fixture
def conn(config):
    connection = EslConnection(config, on_event=lambda event: None)
    connection.connect()
    yield connection
    connection.stop()


def slow(seconds: float, output: str):
    def handler(_args: str) -> str:
        gevent.sleep(seconds)
        return output
    return handler


def sent(fs, command: str) -> bool:
    return wait_for(lambda: any(cmd == command for _, cmd in fs.commands), timeout=5)


# --- one caller's deadline ---------------------------------------------------------------------

def test_given_short_deadline_when_it_passes_then_later_caller_gets_its_own_reply_and_connection_stays_up(
        fakes, conn):
    fs, _ = fakes
    fs.api_handlers["slowcmd"] = slow(0.4, "A's answer\n")
    first = gevent.spawn(conn.api, "slowcmd", 0.1)
    assert sent(fs, "api slowcmd")
    second = gevent.spawn(conn.api, "version", 5.0)

    with pytest.raises(EslTimeout):
        first.get(timeout=2)
    assert second.get(timeout=2) == VERSION  # not "A's answer": that one was dropped
    assert conn.connected
    assert conn.late_replies == 1
    assert conn.api("hostname", 1.0) == "vm"
    assert fs.connections_total == 1


def test_given_no_reply_at_all_when_dead_limit_passes_then_connection_closed_and_every_waiter_failed(fakes, conn):
    fs, _ = fakes
    conn.dead_after = 0.5
    fs.mute_replies = True
    first = gevent.spawn(conn.api, "version", 0.1)
    assert sent(fs, "api version")
    second = gevent.spawn(conn.api, "hostname", 5.0)

    with pytest.raises(EslTimeout):
        first.get(timeout=2)
    started = time.monotonic()
    with pytest.raises(EslUnavailable):
        second.get(timeout=3)
    assert time.monotonic() - started < 1.0
    assert conn.closed.is_set() and "no reply to 'api'" in conn.close_reason


def test_given_outbound_session_when_one_command_times_out_then_session_stays_and_answers_the_next(fakes):
    fs, _ = fakes
    outcome = gevent.event.AsyncResult()

    def handler(session):
        session.connect()
        fs.reply_delay = 0.3
        try:
            session.myevents(timeout=0.1)
        except SessionTimeout as exc:
            outcome.set((exc, session.linger(5, timeout=5), session.closed.is_set(), session.late_replies))

    server = OutboundServer(LOOPBACK, handler)
    server.start()
    try:
        fs.outbound_connect("127.0.0.1", server.port, load_connect_reply(capture_path("in_socket_route.outbound_socket.txt")))
        error, linger_reply, closed, late = outcome.get(timeout=5)
    finally:
        fs.reply_delay = 0.0
        server.stop(timeout=1.0)
    assert isinstance(error, SessionTimeout)
    assert linger_reply == "+OK will linger 5 seconds"
    assert not closed and late == 1


# --- a Content-Length that is not ASCII digits ----------------------------------------------------

@pytest.mark.parametrize("value", ["\u00b2", "\u0661\u0662", "+12", "9" * 5000])
def test_given_bad_content_length_from_freeswitch_when_read_then_dropped_with_reason_no_traceback_no_misframed_event(
        fakes, config, caplog, capsys, value):
    fs, _ = fakes
    events = []
    conn = EslConnection(config, on_event=events.append)
    conn.connect()
    caplog.set_level(logging.DEBUG)
    # Read as 12 bytes (what int() makes of Arabic-Indic digits), the body would be "Event-Name: "
    # and a nameless event would come out, then the HEARTBEAT: both mis-framed.
    bad = b"Content-Length: %s\nContent-Type: text/event-plain\n\nEvent-Name: X\n\n" % value.encode()
    good = frame_event(serialize_event([("Event-Name", "HEARTBEAT")]))
    try:
        fs.send_raw(bad + good)
        assert wait_for(lambda: conn.closed.is_set(), timeout=5)
        assert "bad Content-Length %r" % value[:40] in conn.close_reason
        assert events == []
        [error] = [r for r in caplog.records if r.levelno >= logging.ERROR]
        assert "dropping the connection" in error.getMessage() and error.exc_info is None
        assert "crashed" not in caplog.text
        assert "Traceback" not in capsys.readouterr().err
    finally:
        conn.stop()


# --- command lanes -----------------------------------------------------------------------------

def test_given_listing_and_lookups_when_lane_chosen_then_listings_bulk_and_the_rest_fast():
    assert lane_of("show channels as json") == BULK
    assert lane_of("sofia_contact */100@pbx.test") == FAST
    assert lane_of("hash insert/fs_crm_status/100@pbx.test/busy") == FAST


def test_given_slow_bulk_listing_when_registration_checked_then_fast_lane_answers_at_once(fakes, config):
    fs, _ = fakes
    gate = gevent.event.Event()

    def show_channels(_args: str) -> str:
        gate.wait(5)
        return '{"row_count": 0}\n'

    fs.api_handlers["show channels as json"] = show_channels
    fs.api_handlers["sofia_contact"] = lambda _args: "sofia/internal/sip:100@192.0.2.10:5060"
    commands = FreeswitchCommands(config)
    try:
        listing = gevent.spawn(commands.api, "show channels as json", 5.0)
        assert sent(fs, "api show channels as json")

        started = time.monotonic()
        assert commands.is_registered("100", "pbx.test", timeout=0.5)
        assert time.monotonic() - started < 0.3
        assert not listing.ready()

        gate.set()
        assert listing.get(timeout=5) == '{"row_count": 0}\n'
        lanes = {cmd: number for number, cmd in fs.commands if cmd.startswith("api ")}
        assert lanes["api show channels as json"] != lanes["api sofia_contact */100@pbx.test"]
    finally:
        gate.set()
        commands.close()


# --- interrupted connect -----------------------------------------------------------------------

@pytest.mark.parametrize("how", ["outer timeout", "killed"])
def test_given_connect_interrupted_when_it_stops_then_socket_closed_reader_gone_and_next_use_reconnects(
        fakes, config, monkeypatch, how):
    fs, _ = fakes
    made: list[EslConnection] = []

    class Recorded(EslConnection):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append(self)

    monkeypatch.setattr(commands_module, "EslConnection", Recorded)
    commands = FreeswitchCommands(config)
    fs.reply_delay = 0.5  # the `auth` reply: connect() is waiting when it is interrupted
    try:
        if how == "outer timeout":
            with pytest.raises(gevent.Timeout):
                with gevent.Timeout(0.2):
                    commands.api("version")
        else:
            caller = gevent.spawn(commands.api, "version")
            assert sent(fs, "auth ClueCon")
            caller.kill(block=True, timeout=2)
        interrupted = made[0]
        assert interrupted.closed.is_set()
        assert interrupted.sock.fileno() == -1
        assert wait_for(lambda: interrupted.reader.dead, timeout=2)
        assert wait_for(lambda: fs.connected_clients() == 0, timeout=5)
        assert not commands.connected

        fs.reply_delay = 0.0
        assert commands.api("version") == VERSION
        assert len(made) == 2 and fs.connections_total == 2
    finally:
        fs.reply_delay = 0.0
        commands.close()


def test_given_freeswitch_silent_when_connect_times_out_then_nothing_left_open(config):
    accepted = []

    def silent(sock, _address):
        accepted.append(sock)
        sock.recv(1024)  # returns b"" once the client has closed its end

    server = gevent.server.StreamServer(("127.0.0.1", 0), silent)
    server.start()
    conn = EslConnection(dataclasses.replace(config, port=server.server_port, connect_timeout=0.2),
                         on_event=lambda event: None)
    try:
        with pytest.raises(EslUnavailable):
            conn.connect()
        assert conn.closed.is_set() and conn.sock.fileno() == -1
        assert wait_for(lambda: conn.reader.dead, timeout=2)
    finally:
        server.stop()

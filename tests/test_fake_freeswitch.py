"""The fake FreeSWITCH, driven through real sockets by a raw ESL client: framing, auth, events, api, outbound."""

import json
import logging
import re
import socket
from dataclasses import dataclass, field
from pathlib import Path

import gevent
import gevent.event
import gevent.server
import pytest

from fs_crm.sim.fake_freeswitch import (
    FakeFreeswitch,
    PlainEvent,
    capture_path,
    frame_event,
    load_capture,
    load_connect_reply,
    renumber_call,
    serialize_event,
)

GOODBYE_NOTICE = (b"Content-Type: text/disconnect-notice\nContent-Length: 67\n\n"
                  b"Disconnected, goodbye.\nSee you at ClueCon! http://www.cluecon.com/\n")
SHOW_CHANNELS_COLUMNS = (
    "uuid direction created created_epoch name state cid_name cid_num ip_addr dest application "
    "application_data dialplan context read_codec read_rate read_bit_rate write_codec write_rate "
    "write_bit_rate secure hostname presence_id presence_data accountcode callstate callee_name "
    "callee_num callee_direction call_uuid sent_callee_name sent_callee_num initial_cid_name "
    "initial_cid_num initial_ip_addr initial_dest initial_dialplan initial_context").split()
UUID_RE = re.compile(rb"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


@dataclass
class Frame:
    headers: dict
    body: bytes
    raw: bytes


@dataclass
class RawClient:
    """A minimal ESL client over a plain socket: it only frames, so the test sees the exact bytes."""

    port: int
    sock: socket.socket = field(init=False)
    buffer: bytes = b""
    reads: int = 0

    def __post_init__(self):
        self.sock = socket.create_connection(("127.0.0.1", self.port), timeout=5)

    def send(self, text):
        self.sock.sendall(text.encode())

    def _fill(self):
        chunk = self.sock.recv(65536)
        self.reads += 1
        if not chunk:
            raise EOFError
        self.buffer += chunk

    def frame(self):
        while b"\n\n" not in self.buffer:
            self._fill()
        head, _, self.buffer = self.buffer.partition(b"\n\n")
        headers = dict(line.decode().split(": ", 1) for line in head.split(b"\n"))
        length = int(headers.get("Content-Length", 0))
        while len(self.buffer) < length:
            self._fill()
        body, self.buffer = self.buffer[:length], self.buffer[length:]
        return Frame(headers, body, head + b"\n\n" + body)

    def command(self, text):
        self.send(text + "\n\n")
        return self.frame()

    def login(self, password="ClueCon"):
        assert self.frame().headers == {"Content-Type": "auth/request"}
        return self.command("auth " + password)

    def at_eof(self):
        try:
            while True:
                self._fill()
        except EOFError:
            return self.buffer == b""

    def close(self):
        self.sock.close()


@pytest.fixture
def fake():
    server = FakeFreeswitch().start()
    yield server
    server.stop()


@pytest.fixture
def client(fake):
    clients = []

    def connect():
        c = RawClient(fake.port)
        clients.append(c)
        return c

    yield connect
    for c in clients:
        c.close()


# What the client that recorded the pbx captures subscribed to (captures/pbx/*.sent.txt).
SUBSCRIBE = (Path(__file__).parent / "fixtures" / "pbx" / "in_answered_ringgroup.sent.txt").read_text().split("\n\n")[1].strip()


def subscribed(connect, command=SUBSCRIBE):
    c = connect()
    c.login()
    assert c.command(command).headers["Reply-Text"].startswith("+OK event listener enabled")
    return c


def heartbeat(fake):
    return fake.make_event("HEARTBEAT", [("Event-Info", "System Ready")])


def read_until_heartbeat(c):
    frames = []
    while True:
        frame = c.frame()
        if PlainEvent.parse(frame.body).name == "HEARTBEAT":
            return frames
        frames.append(frame)


# --- auth ----------------------------------------------------------------------------------------

def test_given_right_password_when_auth_then_accepted(fake, client):
    c = client()

    reply = c.login()

    assert reply.raw == b"Content-Type: command/reply\nReply-Text: +OK accepted\n\n"
    assert fake.wait_for(lambda: fake.authenticated_clients() == 1)
    assert fake.commands == [(1, "auth ClueCon")]


def test_given_wrong_password_when_auth_then_err_invalid_goodbye_and_close(fake, client):
    c = client()

    reply = c.login("wrong")

    assert reply.raw == b"Content-Type: command/reply\nReply-Text: -ERR invalid\n\n"
    assert c.frame().raw == GOODBYE_NOTICE
    assert c.at_eof()
    assert fake.wait_for(lambda: fake.connected_clients() == 0)


def test_given_rude_reject_when_connecting_then_rude_rejection_goodbye_and_close():
    with FakeFreeswitch(rude_reject=True) as fake:
        c = RawClient(fake.port)

        assert c.frame().raw == (b"Content-Type: text/rude-rejection\nContent-Length: 24\n\n"
                                 b"Access Denied, go away.\n")
        assert c.frame().raw == GOODBYE_NOTICE
        assert c.at_eof()
        c.close()


def test_given_not_authenticated_when_other_command_then_command_not_found_and_still_open(fake, client):
    c = client()
    c.frame()

    reply = c.command("api status")

    assert reply.raw == b"Content-Type: command/reply\nReply-Text: -ERR command not found\n\n"
    assert c.command("auth ClueCon").headers["Reply-Text"] == "+OK accepted"


def test_given_crlf_line_ends_and_leading_newlines_when_command_then_parsed_like_freeswitch(fake, client):
    c = client()
    c.frame()

    c.send("\r\n\nauth ClueCon\r\n\r\n")

    assert c.frame().headers["Reply-Text"] == "+OK accepted"


def test_given_exit_when_sent_then_bye_then_disconnect_notice_then_close(fake, client):
    c = client()
    c.login()

    reply = c.command("exit")

    assert reply.raw == b"Content-Type: command/reply\nReply-Text: +OK bye\n\n"
    assert c.frame().raw == GOODBYE_NOTICE
    assert c.at_eof()


def test_given_unknown_command_when_authenticated_then_command_not_found(fake, client):
    c = client()
    c.login()

    assert c.command("frobnicate now").headers["Reply-Text"] == "-ERR command not found"


# --- events --------------------------------------------------------------------------------------

def test_given_subscription_when_capture_played_then_every_frame_is_byte_identical(fake, client):
    c = subscribed(client)
    bodies = load_capture(capture_path("in_missed"))

    fake.play(bodies)

    assert [c.frame().raw for _ in bodies] == [frame_event(body) for body in bodies]


def test_given_one_event_type_when_capture_played_then_other_types_not_delivered(fake, client):
    c = subscribed(client, "event plain CHANNEL_HANGUP_COMPLETE HEARTBEAT")
    bodies = load_capture(capture_path("in_missed"))

    fake.play(bodies + [heartbeat(fake)])

    names = [PlainEvent.parse(frame.body).name for frame in read_until_heartbeat(c)]
    expected = [PlainEvent.parse(body).name for body in bodies].count("CHANNEL_HANGUP_COMPLETE")
    assert names == ["CHANNEL_HANGUP_COMPLETE"] * expected
    assert expected == 3


def test_given_custom_subclass_when_played_then_only_that_subclass_delivered(fake, client):
    c = subscribed(client, "event plain HEARTBEAT CUSTOM sofia::unregister")

    fake.play(load_capture(capture_path("register_unregister")) + [heartbeat(fake)])

    frames = read_until_heartbeat(c)
    assert [PlainEvent.parse(f.body).subclass for f in frames] == ["sofia::unregister"]


def test_given_all_when_played_then_custom_events_delivered_too(fake, client):
    c = subscribed(client, "event plain ALL")
    bodies = load_capture(capture_path("register_unregister"))

    fake.play(bodies)

    assert [c.frame().body for _ in bodies] == bodies


def test_given_unauthenticated_client_when_played_then_nothing_sent_to_it(fake, client):
    waiting = client()
    waiting.frame()
    c = subscribed(client, "event plain HEARTBEAT")

    fake.play([heartbeat(fake)])

    c.frame()
    assert waiting.command("auth ClueCon").headers["Reply-Text"] == "+OK accepted"


def test_given_json_subscription_when_played_then_decoded_json_with_body(fake, client):
    c = subscribed(client, "event json CHANNEL_CREATE BACKGROUND_JOB")
    create, job = [b for b in load_capture(capture_path("click_to_call"))
                   if PlainEvent.parse(b).name in ("CHANNEL_CREATE", "BACKGROUND_JOB")][:2]

    fake.play([create, job])

    first, second = c.frame(), c.frame()
    assert first.headers["Content-Type"] == "text/event-json"
    event = json.loads(first.body)
    assert event["Event-Name"] == "CHANNEL_CREATE"
    assert event["Channel-Name"] == "sofia/local/100@127.0.0.1:5071"
    background = json.loads(second.body)
    assert background["Job-Command"] == "originate"
    assert background["_body"] == "+OK 20f7d76c-dd49-4680-8bf3-9d5c73ac511b\n"
    assert background["Content-Length"] == "41"
    assert second.body.startswith(b'{"Event-Name":"BACKGROUND_JOB","Core-UUID":"')  # compact, unformatted


def test_given_filter_on_unique_id_when_played_then_only_that_leg(fake, client):
    bodies = load_capture(capture_path("in_missed"))
    leg = PlainEvent.parse(bodies[0]).get("Unique-ID")
    c = subscribed(client, "event plain ALL")

    reply = c.command("filter Unique-ID " + leg)
    fake.play(bodies + [fake.make_event("HEARTBEAT", [("Unique-ID", leg)])])

    assert reply.headers["Reply-Text"] == "+OK filter added. [Unique-ID]=[%s]" % leg
    frames = read_until_heartbeat(c)
    assert {PlainEvent.parse(f.body).get("Unique-ID") for f in frames} == {leg}
    assert len(frames) == sum(1 for b in bodies if PlainEvent.parse(b).get("Unique-ID") == leg)


def test_given_noevents_when_played_then_nothing_delivered(fake, client):
    c = subscribed(client, "event plain ALL")

    assert c.command("noevents").headers["Reply-Text"] == "+OK no longer listening for events"
    fake.play(load_capture(capture_path("register_unregister")))

    assert c.command("api hostname").body == b"vm"


def test_given_no_known_event_names_when_subscribing_then_no_keywords(fake, client):
    c = client()
    c.login()

    assert c.command("event plain NOT_AN_EVENT").headers["Reply-Text"] == "-ERR no keywords supplied"


def test_given_chunked_play_when_received_then_frames_complete_across_reads(fake, client):
    c = subscribed(client)
    bodies = load_capture(capture_path("in_busy"))

    fake.play(bodies, chunk_size=97)

    assert [c.frame().raw for _ in bodies] == [frame_event(body) for body in bodies]
    assert c.reads > len(bodies)  # frames really arrived in pieces


def test_given_drop_mid_frame_when_reading_then_partial_frame_and_eof(fake, client):
    c = subscribed(client)
    frame = frame_event(load_capture(capture_path("in_busy"))[0])

    fake.drop_clients(mid_frame=frame)

    with pytest.raises(EOFError):
        while True:
            c._fill()
    assert c.buffer == frame[:len(frame) // 2]
    assert fake.connected_clients() == 0


def test_given_event_body_as_mid_frame_when_dropping_then_half_of_its_frame_is_sent(fake, client):
    c = subscribed(client)
    body = load_capture(capture_path("in_busy"))[0]

    fake.drop_clients(mid_frame=body)

    with pytest.raises(EOFError):
        while True:
            c._fill()
    assert c.buffer == frame_event(body)[:len(frame_event(body)) // 2]


def test_given_disconnect_clients_when_reading_then_goodbye_then_eof(fake, client):
    c = subscribed(client)

    fake.disconnect_clients()

    assert c.frame().raw == GOODBYE_NOTICE
    assert c.at_eof()


def test_given_send_raw_when_authenticated_then_bytes_arrive_as_is(fake, client):
    c = subscribed(client)

    fake.send_raw(b"Content-Length: 3\nContent-Type: text/event-plain\n\nabc")

    assert c.frame().body == b"abc"


def test_given_command_body_with_ascii_content_length_when_sent_then_read_as_the_body(fake, client):
    c = client()
    c.login()
    c.send("sendevent CUSTOM\nContent-Length: 4\n\nbody")
    assert c.frame().headers["Reply-Text"].startswith("+OK ")


# The fake reads client commands with fs-crm's own Content-Length rule (fs_crm.freeswitch.eslparse).
@pytest.mark.parametrize("value", ["\u00b2", "\u0661\u0662", "+12", "1_0", "-1", "9" * 5000])
def test_given_command_with_bad_content_length_when_read_then_warning_goodbye_and_closed_without_traceback(
        fake, client, caplog, capsys, value):
    c = client()
    c.login()
    caplog.set_level(logging.DEBUG, logger="fs_crm.sim.fake_freeswitch")

    c.send("sendevent CUSTOM\nContent-Length: %s\n\nEvent-Name: X\n\n" % value)

    assert c.frame().raw == GOODBYE_NOTICE
    assert c.at_eof()
    [warning] = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert warning.levelno == logging.WARNING and warning.exc_info is None
    assert "bad Content-Length %r" % value[:40] in warning.getMessage()
    assert "Traceback" not in capsys.readouterr().err


@pytest.mark.parametrize("value,body", [("3", b"abc"), ("\u00b2", None), ("\u0661\u0662", None), ("+3", None)])
def test_given_inner_content_length_when_event_parsed_then_body_only_for_ascii_digits(value, body):
    event = PlainEvent.parse(b"Event-Name: X\nContent-Length: %s\n\nabc" % value.encode())
    assert event.body == body
    assert event.get("Content-Length") == (None if body is not None else value)


def test_given_wait_subscribed_when_client_subscribes_then_true(fake, client):
    assert not fake.wait_subscribed(timeout=0.05)

    subscribed(client)

    assert fake.wait_subscribed(timeout=5)


# --- api / bgapi ---------------------------------------------------------------------------------

def test_given_played_creates_when_show_channels_as_json_then_live_channels_listed(fake, client):
    c = client()
    c.login()
    bodies = load_capture(capture_path("in_missed"))
    creates = [b for b in bodies if PlainEvent.parse(b).name == "CHANNEL_CREATE"]

    fake.play(creates)
    live = json.loads(c.command("api show channels as json").body)
    fake.play(bodies)
    empty = c.command("api show channels as json")

    assert live["row_count"] == 3
    assert [row["uuid"] for row in live["rows"]] == [PlainEvent.parse(b).get("Unique-ID") for b in creates]
    row = live["rows"][0]
    assert list(row) == SHOW_CHANNELS_COLUMNS
    assert all(isinstance(v, str) for v in row.values())
    assert row["direction"] == "inbound" and row["dest"] == "74999999999"
    assert empty.raw == b'Content-Type: api/response\nContent-Length: 17\n\n{"row_count": 0}\n'


def test_given_unknown_api_when_called_then_command_not_found_text(fake, client):
    c = client()
    c.login()

    assert c.command("api frobnicate 1 2").body == b"-ERR frobnicate Command not found!\n"


def test_given_handler_with_empty_output_when_api_then_no_reply_text(fake, client):
    fake.api_handlers["uuid_kill"] = lambda args: ""
    c = client()
    c.login()

    reply = c.command("api uuid_kill abc")

    assert reply.raw == b"Content-Type: api/response\nContent-Length: 14\n\n-ERR no reply\n"


def test_given_extended_handler_when_api_then_longest_prefix_gets_the_arguments(fake, client):
    seen = []
    fake.api_handlers["sofia_contact"] = lambda args: seen.append(args) or "sofia/local/sip:100@127.0.0.1"
    c = client()
    c.login()

    reply = c.command("api sofia_contact */100@pbx.test")

    assert reply.body == b"sofia/local/sip:100@127.0.0.1"
    assert seen == ["*/100@pbx.test"]


def test_given_own_job_uuid_when_bgapi_then_reply_then_background_job_with_body(fake, client):
    fake.bgapi_handler = lambda text: "+OK 20f7d76c-dd49-4680-8bf3-9d5c73ac511b\n"
    c = subscribed(client)
    job = "103a71a1-ec10-4297-a3ac-a82d78f15572"
    command = ("originate {origination_caller_id_number=79121234567,crm_direction=out}user/100@pbx.test "
               "&bridge(sofia/gateway/carrier/79121234567)")

    reply = c.command("bgapi %s\nJob-UUID: %s" % (command, job))
    event = c.frame()

    assert reply.raw == ("Content-Type: command/reply\nReply-Text: +OK Job-UUID: %s\nJob-UUID: %s\n\n"
                         % (job, job)).encode()
    assert event.headers == {"Content-Length": str(len(event.body)), "Content-Type": "text/event-plain"}
    parsed = PlainEvent.parse(event.body)
    assert [h for h, _ in parsed.headers][-4:] == ["Event-Sequence", "Job-UUID", "Job-Command", "Job-Command-Arg"]
    assert parsed.get("Job-UUID") == job
    assert parsed.get("Job-Command") == "originate"
    assert parsed.get("Job-Command-Arg") == command[len("originate "):]
    assert event.body.endswith(b"\nContent-Length: 41\n\n+OK 20f7d76c-dd49-4680-8bf3-9d5c73ac511b\n")
    assert (1, "bgapi " + command) in fake.commands


def test_given_recorded_originate_when_job_event_made_then_encoding_matches_capture(fake):
    recorded = next(PlainEvent.parse(b) for b in load_capture(capture_path("click_to_call"))
                    if PlainEvent.parse(b).name == "BACKGROUND_JOB")

    made = PlainEvent.parse(fake.make_event("BACKGROUND_JOB", [("Job-Command-Arg", recorded.get("Job-Command-Arg"))]))

    assert made.plain.split(b"\n")[13] == next(line for line in recorded.plain.split(b"\n")
                                               if line.startswith(b"Job-Command-Arg"))


def test_given_no_job_uuid_when_bgapi_then_one_is_made_and_api_table_runs(fake, client):
    c = subscribed(client, "event plain BACKGROUND_JOB")

    reply = c.command("bgapi status")
    event = PlainEvent.parse(c.frame().body)

    job = reply.headers["Job-UUID"]
    assert UUID_RE.fullmatch(job.encode())
    assert event.get("Job-UUID") == job
    assert event.get("Job-Command-Arg") is None
    assert event.body.startswith(b"UP ")


def test_given_mute_replies_when_command_sent_then_recorded_but_never_answered(fake, client):
    c = client()
    c.frame()
    fake.mute_replies = True

    c.send("auth ClueCon\n\n")

    assert fake.wait_for(lambda: fake.commands == [(1, "auth ClueCon")])
    c.sock.settimeout(0.2)
    with pytest.raises(socket.timeout):
        c.frame()


def test_given_reply_delay_when_command_sent_then_answer_comes_later(fake, client):
    c = client()
    c.frame()
    fake.reply_delay = 0.3
    c.send("auth ClueCon\n\n")
    c.sock.settimeout(0.05)

    with pytest.raises(socket.timeout):
        c.frame()
    c.sock.settimeout(5)
    assert c.frame().headers["Reply-Text"] == "+OK accepted"


# --- captures ------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["click_to_call", "in_answered_ringgroup", "in_busy", "in_missed",
                                  "in_socket_route", "internal", "out_answered", "out_busy",
                                  "register_unregister", "in_socket_route.outbound_socket.txt"])
def test_given_recorded_event_when_decoded_and_serialized_again_then_same_bytes(name):
    bodies = load_capture(capture_path(name))

    assert bodies
    for body in bodies:
        event = PlainEvent.parse(body)
        assert serialize_event(event.headers, event.body) == body


def test_given_capture_when_renumbered_then_distinct_uuids_same_lengths_and_shifted_times():
    bodies = load_capture(capture_path("click_to_call"))
    shift = 3_600_000_000

    first = renumber_call(bodies, seed=1, time_shift_us=shift)
    second = renumber_call(bodies, seed=2)

    assert renumber_call(bodies, seed=1, time_shift_us=shift) == first
    original = {m for b in bodies for m in UUID_RE.findall(b)} - {b"b5bfe65e-b09e-4b70-a49e-aeeef00d90fc"}
    renumbered = {m for b in first for m in UUID_RE.findall(b)}
    assert original and not original & renumbered
    core = b"b5bfe65e-b09e-4b70-a49e-aeeef00d90fc"
    assert not (renumbered - {core}) & {m for b in second for m in UUID_RE.findall(b)}
    assert [len(b) for b in second] == [len(b) for b in bodies]
    old_event, new_event = PlainEvent.parse(bodies[0]), PlainEvent.parse(first[0])
    assert int(new_event.get("Event-Date-Timestamp")) == int(old_event.get("Event-Date-Timestamp")) + shift
    assert int(new_event.get("Caller-Channel-Created-Time")) == int(old_event.get("Caller-Channel-Created-Time")) + shift
    assert new_event.get("Caller-Channel-Answered-Time") == "0"
    assert new_event.get("Core-UUID") == old_event.get("Core-UUID")
    assert new_event.get("Event-Date-Local") == old_event.get("Event-Date-Local")
    hangup = next(PlainEvent.parse(b) for b in first if PlainEvent.parse(b).name == "CHANNEL_HANGUP_COMPLETE")
    old_hangup = next(PlainEvent.parse(b) for b in bodies if PlainEvent.parse(b).name == "CHANNEL_HANGUP_COMPLETE")
    assert int(hangup.get("variable_start_epoch")) == int(old_hangup.get("variable_start_epoch")) + 3600
    assert int(hangup.get("variable_start_uepoch")) == int(old_hangup.get("variable_start_uepoch")) + shift
    job = next(PlainEvent.parse(b) for b in first if PlainEvent.parse(b).name == "BACKGROUND_JOB")
    assert len(job.body) == 41 and job.body != next(
        PlainEvent.parse(b) for b in bodies if PlainEvent.parse(b).name == "BACKGROUND_JOB").body


def test_given_two_renumbered_calls_when_played_then_both_channels_live(fake):
    creates = [b for b in load_capture(capture_path("in_busy")) if PlainEvent.parse(b).name == "CHANNEL_CREATE"]

    fake.play(renumber_call(creates, seed="a") + renumber_call(creates, seed="b"))

    assert len(fake.channels) == 2 * len(creates)


# --- outbound socket -----------------------------------------------------------------------------

class SocketApp:
    """A tiny outbound-socket app: connect, myevents, linger, one bridge, then reads until closed."""

    def __init__(self):
        self.replies = []
        self.frames = []
        self.done = gevent.event.Event()
        self.server = gevent.server.StreamServer(("127.0.0.1", 0), self.handle)
        self.server.start()

    def handle(self, sock, _address):
        conn = RawClient.__new__(RawClient)
        conn.sock, conn.buffer, conn.reads = sock, b"", 0
        try:
            for command in ("connect", "myevents", "linger",
                            "sendmsg\ncall-command: execute\nexecute-app-name: bridge\n"
                            "execute-app-arg: user/100@pbx.test"):
                self.replies.append(conn.command(command))
            while True:
                self.frames.append(conn.frame())
        except EOFError:
            pass
        finally:
            self.done.set()


@pytest.fixture
def socket_app():
    app = SocketApp()
    yield app
    app.server.stop()


def test_given_socket_app_when_call_handed_over_then_connect_reply_commands_and_events(fake, socket_app):
    channel_data = load_connect_reply(capture_path("in_socket_route.outbound_socket.txt"))
    events = load_capture(capture_path("in_socket_route.outbound_socket.txt"))

    call = fake.outbound_connect("127.0.0.1", socket_app.server.server_port, channel_data)
    assert call.wait_for(lambda: len(socket_app.replies) == 4)
    assert call.send_event(events[0])
    call.hangup(events=events[-2:])

    assert socket_app.done.wait(5)
    connect = socket_app.replies[0]
    assert connect.raw == channel_data + (b"Content-Type: command/reply\nReply-Text: %2BOK%0A\n"
                                          b"Socket-Mode: async\nControl: full\n\n")
    assert "Content-Length" not in connect.headers
    assert connect.headers["Unique-ID"] == call.uuid == "fcb02919-a34c-4ee3-a4af-eaea63065aec"
    assert [r.headers["Reply-Text"] for r in socket_app.replies[1:]] == [
        "+OK Events Enabled", "+OK will linger", "+OK"]
    assert call.commands == ["connect", "myevents", "linger", "sendmsg"]
    assert call.executed == [("bridge", "user/100@pbx.test")]
    frames = socket_app.frames
    started = PlainEvent.parse(frames[0].body)  # the fake's own event: the bridge started
    assert (started.name, started.get("Unique-ID"), started.get("Application"), started.get("Application-Data")) == (
        "CHANNEL_EXECUTE", call.uuid, "bridge", "user/100@pbx.test")
    assert frames[1].raw == frame_event(events[0])
    assert frames[2].raw == (b"Content-Type: text/disconnect-notice\n"
                             b"Controlled-Session-UUID: fcb02919-a34c-4ee3-a4af-eaea63065aec\n"
                             b"Content-Disposition: linger\n"
                             b"Channel-Name: sofia/external/79121234567@127.0.0.1:5090\n"
                             b"Linger-Time: -1\nContent-Length: 0\n\n")
    assert [f.body for f in frames[3:5]] == events[-2:]
    assert frames[5].headers == {"Content-Type": "text/disconnect-notice",
                                 "Controlled-Session-UUID": call.uuid,
                                 "Content-Disposition": "disconnect", "Content-Length": "67"}
    assert len(frames) == 6
    assert [(a.name, a.ended) for a in call.finished] == [("bridge", "hangup")]


def execute(app, arg, lock):
    return ("sendmsg\ncall-command: execute\nexecute-app-name: %s\nexecute-app-arg: %s%s"
            % (app, arg, "\nevent-lock: true" if lock else ""))


@pytest.mark.parametrize("lock", [False, True])
def test_given_bridge_running_when_transfer_queued_then_it_cuts_the_bridge_short_unless_event_locked(fake, lock):
    replies = []
    events = []

    def app(sock, _address):
        conn = RawClient.__new__(RawClient)
        conn.sock, conn.buffer, conn.reads = sock, b"", 0
        try:
            for command in ("connect", "myevents", execute("bridge", "user/100@pbx.test", lock),
                            execute("transfer", "sales XML default", lock)):
                conn.send(command + "\n\n")
                while True:  # events may come before the reply
                    frame = conn.frame()
                    if frame.headers.get("Content-Type") == "text/event-plain":
                        events.append(PlainEvent.parse(frame.body))
                    else:
                        replies.append(frame)
                        break
            while True:
                events.append(PlainEvent.parse(conn.frame().body))
        except (EOFError, OSError):
            pass

    server = gevent.server.StreamServer(("127.0.0.1", 0), app)
    server.start()
    try:
        call = fake.outbound_connect("127.0.0.1", server.server_port,
                                     load_connect_reply(capture_path("in_socket_route.outbound_socket.txt")))
        assert call.wait_for(lambda: len(replies) == 4)
        assert [r.headers["Reply-Text"] for r in replies[2:]] == ["+OK", "+OK"]  # both queued at once
        if lock:
            # The transfer waits for the bridge; the bridge ends when the phone does not answer.
            assert (call.running.name, [a.name for a in call.queued], call.finished) == ("bridge", ["transfer"], [])
            call.finish_app(originate_disposition="NO_ANSWER")
        # Without the lock the transfer ran at once and the bridge ended as if cancelled.
        expected = [("bridge", "done" if lock else "interrupted"), ("transfer", "done")]
        assert [(a.name, a.ended) for a in call.finished] == expected
        assert call.running is None and call.queued == []
        assert call.wait_for(lambda: len(events) == 4)
        assert [(e.name, e.get("Application")) for e in events] == [
            ("CHANNEL_EXECUTE", "bridge"), ("CHANNEL_EXECUTE_COMPLETE", "bridge"),
            ("CHANNEL_EXECUTE", "transfer"), ("CHANNEL_EXECUTE_COMPLETE", "transfer")]
        assert events[1].get("variable_originate_disposition") == ("NO_ANSWER" if lock else "ORIGINATOR_CANCEL")
        assert events[0].get("Application-UUID") == events[1].get("Application-UUID")
    finally:
        server.stop()


@pytest.mark.parametrize("hangup_after_bridge,disposition,transfer_runs", [
    ("true", "SUCCESS", False),      # the manager took the call: it ends with their talk
    ("false", "SUCCESS", True),
    ("true", "USER_BUSY", True),     # continue_on_fail: the next application takes the call
])
def test_given_locked_bridge_then_transfer_when_bridge_ends_then_variables_decide_whether_transfer_runs(
        fake, hangup_after_bridge, disposition, transfer_runs):
    replies = []

    def app(sock, _address):
        conn = RawClient.__new__(RawClient)
        conn.sock, conn.buffer, conn.reads = sock, b"", 0
        for command in ("connect", execute("set", "hangup_after_bridge=" + hangup_after_bridge, True),
                        execute("set", "continue_on_fail=true", True),
                        execute("bridge", "user/100@pbx.test", True), execute("transfer", "sales XML default", True),
                        "getvar hangup_after_bridge"):
            replies.append(conn.command(command))

    server = gevent.server.StreamServer(("127.0.0.1", 0), app)
    server.start()
    try:
        call = fake.outbound_connect("127.0.0.1", server.server_port,
                                     load_connect_reply(capture_path("in_socket_route.outbound_socket.txt")))
        assert call.wait_for(lambda: len(replies) == 6)
        assert replies[5].headers["Reply-Text"] == hangup_after_bridge

        call.finish_app(originate_disposition=disposition)

        assert ("transfer" in [a.name for a in call.finished]) is transfer_runs
        assert call.channel_down is not transfer_runs
    finally:
        server.stop()


def test_given_session_without_myevents_when_event_sent_then_not_delivered(fake):
    received = []

    def app(sock, _address):
        conn = RawClient.__new__(RawClient)
        conn.sock, conn.buffer, conn.reads = sock, b"", 0
        received.append(conn.command("connect"))
        received.append(conn.command("getvar did_number"))
        received.append(conn.command("getvar nothing_here"))
        received.append(conn.command("api hostname"))
        sock.close()

    server = gevent.server.StreamServer(("127.0.0.1", 0), app)
    server.start()
    try:
        channel_data = load_connect_reply(capture_path("in_socket_route.outbound_socket.txt"))
        call = fake.outbound_connect("127.0.0.1", server.server_port, channel_data, full=False)
        assert call.wait_for(lambda: len(received) == 4)

        assert not call.send_event(load_capture(capture_path("in_socket_route.outbound_socket.txt"))[0])
        assert b"Control: single-channel\n" in received[0].raw
        assert received[1].headers["Reply-Text"] == "74997777777"
        assert received[2].headers["Reply-Text"] == "-ERR command not found"
        assert received[3].headers["Reply-Text"] == "-ERR command not found"  # api needs `full`
    finally:
        server.stop()


def test_given_first_session_command_is_not_connect_when_sent_then_its_reply_is_never_sent(fake):
    replies = []

    def app(sock, _address):
        conn = RawClient.__new__(RawClient)
        conn.sock, conn.buffer, conn.reads = sock, b"", 0
        conn.send("myevents\n\n")
        replies.append(conn.command("linger 5"))
        sock.close()

    server = gevent.server.StreamServer(("127.0.0.1", 0), app)
    server.start()
    try:
        channel_data = load_connect_reply(capture_path("in_socket_route.outbound_socket.txt"))
        call = fake.outbound_connect("127.0.0.1", server.server_port, channel_data)

        assert call.wait_for(lambda: replies)
        assert replies[0].headers["Reply-Text"] == "+OK will linger 5 seconds"
        assert call.commands == ["myevents", "linger 5"]
        assert call.myevents
    finally:
        server.stop()


def test_given_connected_clients_when_stopped_then_shutdown_notice_and_close():
    fake = FakeFreeswitch().start()
    c = subscribed(lambda: RawClient(fake.port))

    fake.stop()

    assert c.frame().raw == (b"Content-Type: text/disconnect-notice\nContent-Length: 31\n\n"
                             b"The system is being shut down.\n")
    assert c.at_eof()
    c.close()

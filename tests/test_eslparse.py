"""The ESL framer and event parser, on real captured bytes."""

import random
import re
from pathlib import Path

import pytest

from fs_crm.freeswitch import eslparse
from fs_crm.freeswitch.eslparse import (
    MAX_BODY_BYTES,
    MAX_HEADER_BYTES,
    EventParseError,
    FrameError,
    FrameReader,
    iter_frames,
    parse_content_length,
    parse_event,
    parse_event_json,
    parse_event_plain_python,
)

needs_index = pytest.mark.skipif(eslparse._eslindex is None,
                                 reason="fs_crm.freeswitch._eslindex not built (no C compiler when installed)")

FIXTURES = Path(__file__).parent / "fixtures"
RINGGROUP = (FIXTURES / "pbx" / "in_answered_ringgroup.esl.txt").read_bytes()


@pytest.fixture(params=["indexed", "python"])
def parse_event_plain(request):
    """Both plain-event parsers: the C index, and the pure-Python one used where it is not built."""
    if request.param == "python":
        return parse_event_plain_python
    if eslparse._eslindex is None:
        pytest.skip("fs_crm.freeswitch._eslindex not built (no C compiler when installed)")
    return eslparse.parse_event_plain_indexed


def test_given_real_stream_when_framed_then_banner_replies_and_every_event_come_out():
    frames = list(iter_frames(RINGGROUP))
    types = [f.content_type for f in frames]
    assert types[:3] == ["auth/request", "command/reply", "command/reply"]
    assert types[3:] == ["text/event-plain"] * 21
    assert frames[1].headers["Reply-Text"] == "+OK accepted"


@pytest.mark.parametrize("chunk", [1, 7, 100, 4096])
def test_given_stream_split_into_small_reads_when_framed_then_same_frames(chunk):
    reader = FrameReader()
    frames = []
    for i in range(0, len(RINGGROUP), chunk):
        frames.extend(reader.feed(RINGGROUP[i:i + chunk]))
    whole = list(iter_frames(RINGGROUP))
    assert [(f.headers, f.body) for f in frames] == [(f.headers, f.body) for f in whole]
    assert reader.buffered == 0


def test_given_values_url_encoded_when_read_then_decoded_one_by_one():
    event = parse_event(list(iter_frames(RINGGROUP))[3])
    assert event.name == "CHANNEL_CREATE"
    assert event["Caller-Caller-ID-Name"] == "Customer 79121234567"
    assert event["Channel-Name"] == "sofia/external/79121234567@127.0.0.1:5090"
    assert event.int("Event-Sequence") == 1645


def test_given_encoded_newline_in_a_value_when_parsed_then_no_forged_header(parse_event_plain):
    # A caller name carrying "%0AEvent-Name: CHANNEL_HANGUP" must stay one value (greenswitch
    # decodes the whole block first and would forge a header from it).
    body = (b"Event-Name: CHANNEL_CREATE\nUnique-ID: u1\n"
            b"Caller-Caller-ID-Name: evil%0AHangup-Cause%3A%20NORMAL_CLEARING\n\n")
    event = parse_event_plain(body)
    assert event["Caller-Caller-ID-Name"] == "evil\nHangup-Cause: NORMAL_CLEARING"
    assert "Hangup-Cause" not in event


def test_given_background_job_when_parsed_then_body_is_separate_from_inner_content_length(parse_event_plain):
    data = (FIXTURES / "02_switchio_eventstream2.txt").read_bytes()
    # That capture marks frame starts with "--" lines; the BACKGROUND_JOB text runs up to the next frame.
    start = data.index(b"Event-Name: BACKGROUND_JOB")
    end = data.index(b"Content-Length: 6516", start)
    event = parse_event_plain(data[start:end])
    assert event.name == "BACKGROUND_JOB"
    assert event["Content-Length"] == "41"
    assert event.body.startswith("+OK ") and len(event.body) == 41


def test_given_repeated_header_when_parsed_then_first_wins_and_all_are_kept(parse_event_plain):
    event = parse_event_plain(b"Event-Name: CHANNEL_HANGUP\nHangup-Cause: A\nHangup-Cause: B\nUnique-ID: u\n\n")
    assert event["Hangup-Cause"] == "A"
    assert event.get_all("Hangup-Cause") == ["A", "B"]


def test_given_custom_event_when_named_then_subclass_is_the_name():
    data = (FIXTURES / "pbx" / "register_unregister.esl.txt").read_bytes()
    event = parse_event(list(iter_frames(data))[3])
    assert event.name == "sofia::register"
    assert event["contact"] == '"" <sip:100@127.0.0.1:5071>'


def test_given_event_without_name_when_parsed_then_clear_error(parse_event_plain):
    with pytest.raises(EventParseError, match="without Event-Name"):
        parse_event_plain(b"Unique-ID: x\n\n")


def test_given_garbage_content_length_when_framed_then_frame_error_names_it():
    with pytest.raises(FrameError, match="bad Content-Length 'abc'"):
        FrameReader().feed(b"Content-Length: abc\nContent-Type: text/event-plain\n\nxx")


# Values str.isdigit() or int() accept that are not ASCII digits, and other near misses.
BAD_CONTENT_LENGTHS = [
    "\u00b2",        # superscript two: isdigit() is True, int() raises
    "\u0661\u0662",  # Arabic-Indic 12: isdigit() is True and int() reads 12
    " 12",           # int() strips whitespace
    "12 ",
    "+12",           # int() takes a sign
    "1_0",           # int() takes underscores
    "-1",
    "",
    "1e3",
    "0x10",
    "9" * 5000,      # more digits than int() converts by default (4300)
    str(MAX_BODY_BYTES + 1),
    "000000012",     # nine digits: more than the limit ever needs
]


@pytest.mark.parametrize("value", BAD_CONTENT_LENGTHS)
def test_given_content_length_not_ascii_digits_within_limit_when_parsed_then_frame_error_names_header_and_value(value):
    with pytest.raises(FrameError, match="bad Content-Length %s" % re.escape(repr(value[:40]))):
        parse_content_length(value)


@pytest.mark.parametrize("value,length", [("0", 0), ("7", 7), ("0012", 12), ("6516", 6516),
                                          (str(MAX_BODY_BYTES), MAX_BODY_BYTES)])
def test_given_ascii_digits_within_limit_when_parsed_then_length(value, length):
    assert parse_content_length(value) == length


# The framer strips the space around a header value, so " 12", "12 " and "" are header syntax there.
@pytest.mark.parametrize("value", [v for v in BAD_CONTENT_LENGTHS if v == v.strip() and v])
def test_given_bad_outer_content_length_when_framed_then_frame_error_not_another_exception(value):
    data = b"Content-Length: %s\nContent-Type: text/event-plain\n\n" % value.encode() + b"Event-Name: X\n\n" * 4
    with pytest.raises(FrameError, match="bad Content-Length"):
        FrameReader().feed(data)


@pytest.mark.parametrize("value", ["\u00b2", "\u0661\u0662", "+3", "1_0", "9" * 5000])
def test_given_bad_inner_content_length_when_parsed_then_event_parse_error(parse_event_plain, value):
    data = b"Event-Name: BACKGROUND_JOB\nContent-Length: %s\n\n+OK body\n" % value.encode()
    with pytest.raises(EventParseError, match="bad inner Content-Length"):
        parse_event_plain(data)


def test_given_header_block_that_never_ends_when_framed_then_frame_error():
    with pytest.raises(FrameError, match="no end of frame headers"):
        FrameReader().feed(b"X: " + b"y" * (MAX_HEADER_BYTES + 10))


def test_given_json_event_when_parsed_then_values_and_body_kept():
    event = parse_event_json(b'{"Event-Name":"BACKGROUND_JOB","Job-UUID":"j1","X":["a","b"],"_body":"+OK u\\n"}')
    assert event.name == "BACKGROUND_JOB"
    assert event.body == "+OK u\n"
    assert event.get_all("X") == ["a", "b"]


# --- the C index and the pure-Python parser agree -------------------------------------------------

def all_captured_event_bodies() -> list[bytes]:
    bodies = []
    for path in sorted(FIXTURES.glob("**/*.esl.txt")):
        bodies.extend(f.body for f in iter_frames(path.read_bytes()) if f.content_type == "text/event-plain")
    return bodies


def described(event) -> dict:
    """Everything a reader can get out of an event."""
    names = event.names()
    return {"names": sorted(names), "unique": len(names) == len(set(names)), "name": event.name,
            "values": {n: (event.get(n), event[n], n in event, event.get_all(n), event.int(n, -1)) for n in names},
            "absent": (event.get("No-Such-Header"), event.get("No-Such", "x"), "No-Such" in event,
                       event.get_all("No-Such")),
            "body": event.body}


def outcome(parse, data: bytes):
    try:
        return described(parse(data))
    except EventParseError as exc:
        return "EventParseError: %s" % exc


@needs_index
def test_given_every_captured_event_when_parsed_both_ways_then_same_event():
    bodies = all_captured_event_bodies()
    assert len(bodies) > 100
    for body in bodies:
        assert outcome(eslparse.parse_event_plain_indexed, body) == outcome(parse_event_plain_python, body), body[:200]


EDGE_CASES = [
    b"Event-Name: X\nEmpty:\nNo colon here\nTrailing%:\n\n",
    b"Event-Name: X\nA: 100%\nB: %zz%2%\nC: %D0%9F%D1%80%D0%B8\nD: %FF%fe\nE: caf\xc3\xa9 %41\n\n",
    b"Event-Name: X\nA: a: b: c\nA:\nA: third\nB::\n:\n: lone value\n\n",
    b"Event-Name: X\nF: no final blank line",
    b"Event-Name: X\nF: only one newline\n",
    b"Event-Name: BACKGROUND_JOB\nContent-Length: 5\n\n\xd0\x9f\xd1\x80\xd0\xb8\nvariable_x: y\n",
    b"Event-Name: BACKGROUND_JOB\nContent-Length: 99\n\n+OK short\n",
    b"Event-Name: BACKGROUND_JOB\nContent-Length: -1\n\nbody\n",
    b"Event-Name: BACKGROUND_JOB\nContent-Length: \xc2\xb2\n\nbody\n",
    b"Event-Name: BACKGROUND_JOB\nContent-Length: \xd9\xa1\xd9\xa2\n\nbody\n",
    b"Event-Name: X\nvariable_a: 1\nContent-Length: 3\n\nabc",
    b"Event-Name: CUSTOM\nEvent-Subclass: sofia%3A%3Aregister\n\n",
    b"Event-Name: CUSTOM\nEvent-Subclass:\n\n",
    b"Event-Name: X\nA: 12\nB: -3\nC: 1_0\nD: 99999999999999999999999\nE: %31%32\nF:  7 \nG: 1e3\nH: \xd9\xa3\n\n",
    b"Unique-ID: no name\n\n",
    b"",
    b"\n\nEvent-Name: after a blank line\n",
    b"Event-Name: \xff\xfe\nN\xc3\xa4me: v\n\n",
]


@needs_index
@pytest.mark.parametrize("data", EDGE_CASES)
def test_given_odd_event_when_parsed_both_ways_then_same_outcome(data):
    assert outcome(eslparse.parse_event_plain_indexed, data) == outcome(parse_event_plain_python, data)


@needs_index
def test_given_random_mutations_of_real_events_when_parsed_both_ways_then_same_outcome():
    pieces = [b"\n", b": ", b":", b"%", b"%4", b"%41", b"%0A", b"%zz", b"\xd0", b"\x9f", b"variable_x",
              b"Content-Length: 4\n", b"\n\n", b" ", b"Event-Name", b"Hangup-Cause: A\n"]
    rng = random.Random(20261126)
    bodies = all_captured_event_bodies()
    for _ in range(400):
        data = bytearray(rng.choice(bodies))
        for _ in range(rng.randint(1, 8)):
            at = rng.randrange(len(data) + 1)
            if rng.random() < 0.3:
                del data[at:at + rng.randint(1, 40)]
            else:
                data[at:at] = rng.choice(pieces)
        data = bytes(data)
        assert outcome(eslparse.parse_event_plain_indexed, data) == outcome(parse_event_plain_python, data), data

"""The ESL framer and event parser, on real captured bytes."""

from pathlib import Path

import pytest

from fs_crm.eslparse import (
    MAX_HEADER_BYTES,
    EventParseError,
    FrameError,
    FrameReader,
    iter_frames,
    parse_event,
    parse_event_json,
    parse_event_plain,
)

FIXTURES = Path(__file__).parent / "fixtures"
RINGGROUP = (FIXTURES / "pbx" / "in_answered_ringgroup.esl.txt").read_bytes()


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


def test_given_encoded_newline_in_a_value_when_parsed_then_no_forged_header():
    # A caller name carrying "%0AEvent-Name: CHANNEL_HANGUP" must stay one value (greenswitch
    # decodes the whole block first and would forge a header from it).
    body = (b"Event-Name: CHANNEL_CREATE\nUnique-ID: u1\n"
            b"Caller-Caller-ID-Name: evil%0AHangup-Cause%3A%20NORMAL_CLEARING\n\n")
    event = parse_event_plain(body)
    assert event["Caller-Caller-ID-Name"] == "evil\nHangup-Cause: NORMAL_CLEARING"
    assert "Hangup-Cause" not in event


def test_given_background_job_when_parsed_then_body_is_separate_from_inner_content_length():
    data = (FIXTURES / "02_switchio_eventstream2.txt").read_bytes()
    # That capture marks frame starts with "--" lines; the BACKGROUND_JOB text runs up to the next frame.
    start = data.index(b"Event-Name: BACKGROUND_JOB")
    end = data.index(b"Content-Length: 6516", start)
    event = parse_event_plain(data[start:end])
    assert event.name == "BACKGROUND_JOB"
    assert event["Content-Length"] == "41"
    assert event.body.startswith("+OK ") and len(event.body) == 41


def test_given_repeated_header_when_parsed_then_first_wins_and_all_are_kept():
    event = parse_event_plain(b"Event-Name: CHANNEL_HANGUP\nHangup-Cause: A\nHangup-Cause: B\nUnique-ID: u\n\n")
    assert event["Hangup-Cause"] == "A"
    assert event.get_all("Hangup-Cause") == ["A", "B"]


def test_given_custom_event_when_named_then_subclass_is_the_name():
    data = (FIXTURES / "pbx" / "register_unregister.esl.txt").read_bytes()
    event = parse_event(list(iter_frames(data))[3])
    assert event.name == "sofia::register"
    assert event["contact"] == '"" <sip:100@127.0.0.1:5071>'


def test_given_event_without_name_when_parsed_then_clear_error():
    with pytest.raises(EventParseError, match="without Event-Name"):
        parse_event_plain(b"Unique-ID: x\n\n")


def test_given_garbage_content_length_when_framed_then_frame_error_names_it():
    with pytest.raises(FrameError, match="bad Content-Length 'abc'"):
        FrameReader().feed(b"Content-Length: abc\nContent-Type: text/event-plain\n\nxx")


def test_given_header_block_that_never_ends_when_framed_then_frame_error():
    with pytest.raises(FrameError, match="no end of frame headers"):
        FrameReader().feed(b"X: " + b"y" * (MAX_HEADER_BYTES + 10))


def test_given_json_event_when_parsed_then_values_and_body_kept():
    event = parse_event_json(b'{"Event-Name":"BACKGROUND_JOB","Job-UUID":"j1","X":["a","b"],"_body":"+OK u\\n"}')
    assert event.name == "BACKGROUND_JOB"
    assert event.body == "+OK u\n"
    assert event.get_all("X") == ["a", "b"]

"""Recorded calls replayed as new ones, for the demo, the tests and the benchmarks."""

from __future__ import annotations

import shutil
import time
from functools import lru_cache
from pathlib import Path

from fs_crm import vocab
from fs_crm.sim.fake_freeswitch import capture_path, load_capture, renumber_call, with_recording_mark

CAPTURES = Path(__file__).parent / "captures" / "pbx"
RECORDING = CAPTURES / "in_answered_ringgroup.recording.wav"
# Where the captured RECORD_STOP events say FreeSWITCH wrote its files.
CAPTURED_RECORDING_DIR = b"/srv/fsrec/"


_MISSING = object()


@lru_cache(maxsize=None)
def captured(scenario: str) -> tuple[bytes, ...]:
    """Event bodies of one recorded call, in wire order (read once)."""
    return tuple(with_recording_mark(body) for body in load_capture(capture_path(scenario)))


def header(body: bytes, name: str, default=_MISSING) -> str:
    """One header of a raw plain event, as sent (still URL-encoded); KeyError, or `default`, when absent."""
    key = name.encode() + b": "
    if body.startswith(key):
        start = len(key)
    else:
        at = body.find(b"\n" + key)
        if at < 0:
            if default is _MISSING:
                raise KeyError(name)
            return default
        start = at + 1 + len(key)
    end = body.find(b"\n", start)
    return body[start:end if end >= 0 else len(body)].decode()


def fresh_call(scenario: str, seed: int | str, starts_at: float | None = None) -> list[bytes]:
    """A captured call with new UUIDs, moved to `starts_at` (epoch seconds; default now) so its
    cards are not stale."""
    bodies = list(captured(scenario))
    first = int(header(bodies[0], "Event-Date-Timestamp"))
    target_us = int((time.time() if starts_at is None else starts_at) * 1e6)
    # Whole seconds keep FreeSWITCH's own *_epoch variables true to the microsecond stamps.
    shift_us = (target_us - first) // 1_000_000 * 1_000_000
    return renumber_call(bodies, seed=seed, time_shift_us=shift_us)


def first_leg(bodies: list[bytes]) -> str:
    """The call's first leg UUID: the externalId the CRM gets."""
    return header(bodies[0], "Unique-ID")


def with_recording(bodies: list[bytes], directory: Path, *, answer_required: bool = False) -> list[bytes]:
    """The call's RECORD_STOP names a real file in `directory` (a copy of a real recording).
    Calls that recorded nothing come back unchanged.

    With `answer_required`, as conf/freeswitch/recording.xml records (RECORD_ANSWER_REQ=true): only a
    channel that was answered leaves a file. The captures in captures/pbx/ were recorded from the first
    ringback on, so a missed or busy call there has a file of ringback; here its RECORD_START goes and
    its RECORD_STOP says FreeSWITCH discarded the file, as a real FreeSWITCH with the snippet says it
    (captures/live/single_busy.esl.txt)."""
    if not any(CAPTURED_RECORDING_DIR in body for body in bodies):
        return bodies
    unanswered = _never_answered_recordings(bodies) if answer_required else set()
    moved = []
    for body in bodies:
        if header(body, vocab.H_UNIQUE_ID, None) in unanswered:
            name = header(body, vocab.H_EVENT_NAME, None)
            if name == vocab.RECORD_START:
                continue  # the recording waits for an answer that never comes
            if name == vocab.RECORD_STOP:
                body = _discarded(body)
        moved.append(body.replace(CAPTURED_RECORDING_DIR, str(directory).encode() + b"/"))
    if any(header(stop, vocab.H_UNIQUE_ID) not in unanswered for stop in _record_stops(bodies)):
        directory.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(RECORDING, directory / ("%s.wav" % first_leg(bodies)))
    return moved


def _record_stops(bodies: list[bytes]) -> list[bytes]:
    return [body for body in bodies if header(body, vocab.H_EVENT_NAME, None) == vocab.RECORD_STOP]


def _never_answered_recordings(bodies: list[bytes]) -> set[str]:
    """Channels whose recording stopped without the channel ever being answered (answered time 0)."""
    return {header(stop, vocab.H_UNIQUE_ID) for stop in _record_stops(bodies)
            if header(stop, vocab.H_ANSWERED_TIME, "0") == "0"}


def _discarded(body: bytes) -> bytes:
    """A RECORD_STOP as FreeSWITCH sends it for a file it deleted: nothing was recorded."""
    for name, value in (("variable_RECORD_ANSWER_REQ", b"true"), (vocab.V_RECORD_DISCARDED, b"true"),
                        ("variable_record_samples", b"0"), ("variable_record_seconds", b"0"),
                        ("variable_record_ms", b"0"), ("variable_record_completion_cause", b"empty-file"),
                        (vocab.H_RECORD_COMPLETION_CAUSE, b"empty-file")):
        body = _set_header(body, name, value)
    return body


def _set_header(body: bytes, name: str, value: bytes) -> bytes:
    lines = body.split(b"\n")
    key = name.encode() + b": "
    for index, line in enumerate(lines):
        if line.startswith(key):
            lines[index] = key + value
            return b"\n".join(lines)
    # After the last header line (a body, if any, follows a blank line).
    end = lines.index(b"") if b"" in lines else len(lines)
    lines.insert(end, key + value)
    return b"\n".join(lines)

"""Recorded calls replayed as new ones, for the demo, the tests and the benchmarks."""

from __future__ import annotations

import shutil
import time
from functools import lru_cache
from pathlib import Path

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


def with_recording(bodies: list[bytes], directory: Path) -> list[bytes]:
    """The call's RECORD_STOP names a real file in `directory` (a copy of a real recording).
    Calls that recorded nothing come back unchanged."""
    if not any(CAPTURED_RECORDING_DIR in body for body in bodies):
        return bodies
    directory.mkdir(parents=True, exist_ok=True)
    moved = [body.replace(CAPTURED_RECORDING_DIR, str(directory).encode() + b"/") for body in bodies]
    shutil.copyfile(RECORDING, directory / ("%s.wav" % first_leg(bodies)))
    return moved

"""`fs-crm demo` as a newcomer runs it: a subprocess, read as text. The demo must not mislead: only
answered calls carry a recording (as conf/freeswitch/recording.xml records), every time says its
zone, every call says in one line why it looks as it does, and a piece of fs-crm's own log shows."""

import os
import re
import subprocess
import sys
import time

import pytest

from fs_crm import vocab
from fs_crm.demo import DEMO_CALLS, WHY
from fs_crm.sim.calls import first_leg, fresh_call, header, with_recording

TIME_WITH_ZONE = re.compile(r"\b\d{4}-\d\d-\d\d \d\d:\d\d:\d\d Europe/Moscow\b")
LOG_LINE = re.compile(r"^  \d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (INFO|WARNING|ERROR) [\w.]+: ")
ANSWERED = {"in_answered_ringgroup", "out_answered"}


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "fs_crm", "demo"], capture_output=True, text=True, timeout=90,
                            stdin=subprocess.DEVNULL, cwd=tmp_path_factory.mktemp("demo"), env=dict(os.environ))
    return result, time.monotonic() - started


def section(output: str, heading: str) -> list[str]:
    """The lines after the first line starting with `heading`, up to the next blank line."""
    lines = output.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(heading))
    body = []
    for line in lines[start + 1:]:
        if not line.strip():
            break
        body.append(line)
    return body


def table(output: str, heading: str) -> list[dict[str, str]]:
    """A printed table as rows of {column: cell}: cells are separated by two spaces or more."""
    lines = [line for line in section(output, heading) if line.startswith("  ")]
    names = re.split(r"\s{2,}", lines[0].strip())
    assert set(lines[1].strip()) <= {"-", " "}
    rows = [re.split(r"\s{2,}", line.strip()) for line in lines[2:]]
    assert all(len(row) == len(names) for row in rows), rows
    return [dict(zip(names, row, strict=True)) for row in rows]


def test_demo_exits_0_quickly_and_quietly(demo):
    result, took = demo
    assert result.returncode == 0, result.stdout + result.stderr
    assert "\nOK: 5 calls in the CRM history" in result.stdout
    # The daemon's INFO lines are shown in the output, not leaked to stderr at the default level.
    assert result.stderr == ""
    assert took < 30, took


def test_only_answered_calls_have_a_recording(demo):
    result, _ = demo
    history = table(result.stdout, "Call history the CRM received")
    assert [row["result"] for row in history] == ["answered", "no answer", "answered", "busy", "busy"]
    for row in history:
        assert row["recording"] == ("yes" if row["result"] == "answered" else "-"), row
    # ... and the one the player fetches plays.
    fetch = section(result.stdout, "Recording of call ")
    assert fetch[0].startswith("  GET http://127.0.0.1:") and "?clientId=" in fetch[0]
    assert re.match(r"  -> HTTP 200, audio/wav, \d{4,} bytes$", fetch[1]), fetch


def test_every_call_line_has_a_time_with_its_zone(demo):
    result, _ = demo
    played = table(result.stdout, "The calls, captured on a real FreeSWITCH")
    history = table(result.stdout, "Call history the CRM received")
    assert [row["call"] for row in played] == [str(n) for n in range(1, len(DEMO_CALLS) + 1)]
    for row in played + history:
        assert TIME_WITH_ZONE.fullmatch(row.get("started") or row["date"]), row
    # The CRM's `date` is the local time the call started, as the list of calls says it.
    started = {row["call"]: row["started"] for row in played}
    assert all(row["date"] == started[row["call"]] for row in history)
    assert len(set(started.values())) == len(started)  # one call a minute: the times read as a story


def test_each_call_has_its_one_line_explanation(demo):
    result, _ = demo
    assert set(WHY) == {scenario for scenario, _ in DEMO_CALLS}
    why = section(result.stdout, "Why each call looks as it does in the CRM")
    assert len(why) == len(DEMO_CALLS), why
    for number, ((scenario, _), line) in enumerate(zip(DEMO_CALLS, why, strict=True), start=1):
        assert line.startswith("  call %d  %s: " % (number, WHY[scenario])), line
        if scenario in ANSWERED:
            assert line.endswith(", recording"), line
        elif scenario == "internal":
            assert line.endswith("no card; no history"), line
        else:
            assert line.endswith(", no recording"), line
    by_scenario = dict(zip((s for s, _ in DEMO_CALLS), why, strict=True))
    assert "100's card closed as cancel, 200's as answered; history: answered, 200, talk 3 s, waited 2 s" \
        in by_scenario["in_answered_ringgroup"]
    assert "cards for 100 and 200 opened and closed as 'no answered'; history: 'no answer', waited 6 s" \
        in by_scenario["in_missed"]
    assert ": no card; history: busy, 300," in by_scenario["in_busy"]


def test_a_log_excerpt_shows_the_daemons_own_lines(demo):
    result, _ = demo
    excerpt = section(result.stdout, "fs-crm's own log")
    lines = [line for line in excerpt if LOG_LINE.match(line)]
    assert lines and len(excerpt) <= 20, excerpt
    finished = [line for line in lines if " finished: " in line]
    assert len(finished) == 5 and all(" account demo-shop finished: " in line for line in finished), finished
    assert any(re.search(r"demo-shop: uploaded \d+ calls \(", line) for line in lines), lines
    assert not [line for line in lines if "fs_crm.sim" in line]  # the simulators are not the daemon


# --- the recording as recording.xml makes it (fs_crm.sim.calls.with_recording) ------------------

def _record_stop(bodies):
    return next(body for body in bodies if header(body, vocab.H_EVENT_NAME) == vocab.RECORD_STOP)


@pytest.mark.parametrize("scenario", ["in_missed", "in_busy", "out_busy"])
def test_given_nobody_answered_when_recording_needs_an_answer_then_no_file_and_discarded(scenario, tmp_path):
    call = with_recording(fresh_call(scenario, "t-" + scenario), tmp_path, answer_required=True)
    stop = _record_stop(call)
    assert header(stop, vocab.V_RECORD_DISCARDED) == "true"
    assert header(stop, vocab.H_RECORD_COMPLETION_CAUSE) == "empty-file"
    assert header(stop, vocab.H_RECORD_FILE_PATH).startswith(str(tmp_path) + "/")
    assert not [body for body in call if header(body, vocab.H_EVENT_NAME) == vocab.RECORD_START]
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("scenario", sorted(ANSWERED))
def test_given_an_answer_when_recording_needs_one_then_the_file_is_there(scenario, tmp_path):
    call = with_recording(fresh_call(scenario, "t-" + scenario), tmp_path, answer_required=True)
    stop = _record_stop(call)
    assert header(stop, vocab.V_RECORD_DISCARDED, None) is None
    assert header(stop, vocab.H_RECORD_FILE_PATH) == str(tmp_path / ("%s.wav" % first_leg(call)))
    assert (tmp_path / ("%s.wav" % first_leg(call))).stat().st_size > 0

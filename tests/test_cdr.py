"""mod_json_cdr's CDRs into history (fs_crm.calls.cdr), judged by the live runs that saved them.

Each fs_crm/sim/captures/cdr/<scenario>/ holds the CDR of every leg of one live test's calls and
the ESL stream of the same run (tests/live/conftest.py, FS_CRM_SAVE_CDR_CAPTURES=1): the records
rebuilt from the CDRs must be those the tracker makes of the stream, and what tests/live/scenarios.py
expects of the scenario.
"""

import base64
import dataclasses
import gzip
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent / "live"))

from scenarios import ACCOUNT, SCENARIOS, check_history  # noqa: E402

from fs_crm import vocab  # noqa: E402
from fs_crm.calls import CallTracker  # noqa: E402
from fs_crm.calls.cdr import (  # noqa: E402
    CdrError,
    cdr_document,
    events_of,
    group_calls,
    leg_of,
    missing_legs,
    parse_cdr,
    records_from_cdrs,
)
from fs_crm.config import parse_config  # noqa: E402
from fs_crm.crm.payloads import CallRecord  # noqa: E402
from fs_crm.freeswitch.eslparse import iter_frames, parse_event_plain  # noqa: E402
from fs_crm.sim.config import sim_config  # noqa: E402
from fs_crm.store.history_queue import new_calls  # noqa: E402
from recordings.tokens import RecordingLinks, TokenCodec  # noqa: E402

CAPTURES = Path(__file__).parents[1] / "fs_crm" / "sim" / "captures" / "cdr"
SCENARIO_DIRS = sorted(p.name for p in CAPTURES.iterdir() if p.is_dir())
# FreeSWITCH was killed mid-call: the legs that were up never reported (the ESL path reports the
# call from what it saw; from CDRs it is incomplete).
KILLED = "freeswitch_killed_mid_call"
COMPLETE = [name for name in SCENARIO_DIRS if name != KILLED]
# The CallRecord fields that must be the ESL path's exactly; durations may differ by a second.
SAME_FIELDS = ("external_id", "type", "result", "phone", "code", "user_id", "site", "external_phone", "date",
               "recording_path")


def accounts():
    table = sim_config("127.0.0.1", 8021, "http://crm.test", Path("/nonexistent"), api_key="key")
    table["accounts"][0].update(ACCOUNT)
    return parse_config("<live>", table, env={}).accounts


def cdr_files(name: str) -> list[Path]:
    return sorted((CAPTURES / name).glob("*.cdr.json"))


def legs_of(name: str):
    return [parse_cdr(path.read_bytes(), path.name) for path in cdr_files(name)]


def esl_events(name: str):
    raw = gzip.decompress((CAPTURES / name / "esl.txt.gz").read_bytes())
    return [parse_event_plain(frame.body) for frame in iter_frames(raw) if frame.content_type == vocab.EVENT_PLAIN]


def esl_records(name: str) -> list[CallRecord]:
    tracker = CallTracker(accounts())
    return [r for event in esl_events(name) for r in tracker.handle(event) if isinstance(r, CallRecord)]


def fs_url_encode(text: str) -> str:
    """FreeSWITCH's switch_url_encode: bytes outside 0x20-0x7E and its unsafe set become %XX; an
    existing %XX is left as it is."""
    unsafe = set("\r\n #%&+:;<=>?@[\\]^`{|}\"")
    hexdigits = set("0123456789ABCDEF")
    data = text.encode("utf-8")
    out = []
    for i, byte in enumerate(data):
        char = chr(byte)
        if char == "%" and len(data) > i + 2 and {chr(data[i + 1]), chr(data[i + 2])} <= hexdigits:
            out.append(char)
        elif byte < 0x20 or byte > 0x7E or char in unsafe:
            out.append("%%%02X" % byte)
        else:
            out.append(char)
    return "".join(out)


def test_every_cdr_capture_is_a_scenario_with_its_stream():
    assert SCENARIO_DIRS and set(SCENARIO_DIRS) <= set(SCENARIOS)
    for name in SCENARIO_DIRS:
        assert (CAPTURES / name / "esl.txt.gz").exists(), name
        assert cdr_files(name), name


# --- the same records as the ESL path ------------------------------------------------------------
@pytest.mark.parametrize("name", COMPLETE)
def test_given_cdrs_of_a_live_call_when_replayed_then_same_records_as_its_esl_stream(name):
    from_cdrs = sorted(records_from_cdrs(legs_of(name), accounts()), key=lambda r: r.external_id)
    from_esl = sorted(esl_records(name), key=lambda r: r.external_id)

    expected = SCENARIOS[name]
    assert len(from_cdrs) == len(from_esl) == (0 if expected.history is None else expected.calls)
    for cdr, esl in zip(from_cdrs, from_esl, strict=True):
        assert {f: getattr(cdr, f) for f in SAME_FIELDS} == {f: getattr(esl, f) for f in SAME_FIELDS}
        assert abs(cdr.duration - esl.duration) <= 1 and abs(cdr.duration_waiting - esl.duration_waiting) <= 1, (
            cdr, esl)
        assert check_history(cdr.to_api(), expected) == [], cdr


@pytest.mark.parametrize("name", SCENARIO_DIRS)
def test_given_cdrs_when_turned_into_events_then_each_leg_is_first_seen_as_freeswitch_created_it(name):
    """What the tracker makes of a leg at first sight (its call, role, extension, numbers) is the
    same from the synthetic CHANNEL_CREATE as from the real one."""
    def first_sight(event):
        tracker = CallTracker(accounts())
        tracker.handle(event)
        [call] = tracker.calls.values()
        return call.id, dataclasses.asdict(call.legs[event[vocab.H_UNIQUE_ID]])

    real = {e[vocab.H_UNIQUE_ID]: e for e in esl_events(name) if e.name == vocab.CHANNEL_CREATE}
    synthetic = [e for e in events_of(legs_of(name)) if e.name == vocab.CHANNEL_CREATE]
    assert synthetic
    for event in synthetic:
        assert first_sight(event) == first_sight(real[event[vocab.H_UNIQUE_ID]])


def test_given_the_cdrs_of_every_scenario_in_one_pile_then_grouped_into_their_calls_and_same_records():
    pile = [leg for name in SCENARIO_DIRS for leg in legs_of(name)]
    groups = {frozenset(leg.uuid for leg in group) for group in group_calls(reversed(pile))}
    per_scenario = {frozenset(leg.uuid for leg in group) for name in SCENARIO_DIRS for group in group_calls(legs_of(name))}
    assert groups == per_scenario
    # Two customers ringing one group at once are two calls, and so are their CDRs.
    assert len(group_calls(legs_of("ringgroup_two_customers"))) == 2
    together = sorted(r.external_id for r in records_from_cdrs(pile, accounts()))
    apart = sorted(r.external_id for name in COMPLETE for r in records_from_cdrs(legs_of(name), accounts()))
    assert together == apart


def test_given_a_call_whose_legs_died_with_freeswitch_then_incomplete_and_no_record():
    [group] = group_calls(legs_of(KILLED))
    customer = next(e for e in esl_events(KILLED) if e.name == vocab.CHANNEL_CREATE)[vocab.H_UNIQUE_ID]
    assert missing_legs(group) == {customer}
    assert records_from_cdrs(group, accounts()) == []


@pytest.mark.parametrize("name", COMPLETE)
def test_given_a_complete_call_then_no_leg_is_missing(name):
    for group in group_calls(legs_of(name)):
        assert missing_legs(group) == set()


# --- bodies ------------------------------------------------------------------------------------------
def sample() -> Path:
    return cdr_files("blind_transfer")[0]


def same_leg(a, b) -> bool:
    return (a.uuid, dict(a.variables), [(dict(p.caller), dict(p.times), p.originators, p.originatees) for p in a.profiles],
            a.start_us, a.answer_us, a.end_us) == (
        b.uuid, dict(b.variables), [(dict(p.caller), dict(p.times), p.originators, p.originatees) for p in b.profiles],
        b.start_us, b.answer_us, b.end_us)


def encodings():
    """The body in every form mod_json_cdr writes (json_cdr.conf.xml: encode, encode-values)."""
    text = sample().read_text()
    document = json.loads(text)
    values_encoded = dict(document, variables={k: fs_url_encode(v) for k, v in document["variables"].items()})
    b64 = base64.b64encode(text.encode()).decode()
    return {
        "posted, encode=false": text.encode(),
        "spooled, encode=false (trailing newline)": (text.rstrip("\n") + "\n").encode(),
        "posted, encode=true": ("cdr=" + fs_url_encode(text)).encode(),
        "spooled, encode=true": fs_url_encode(text).encode(),
        "posted, encode=base64": ("cdr=" + b64).encode(),
        "spooled, encode=base64": b64.encode(),
        "encode-values=true": json.dumps(values_encoded).encode(),
        "as text": text,
    }


@pytest.mark.parametrize("form", sorted(encodings()))
def test_given_each_body_form_mod_json_cdr_writes_then_the_same_leg(form):
    plain = parse_cdr(sample().read_bytes())
    leg = parse_cdr(encodings()[form])
    assert same_leg(leg, plain)
    assert leg.variables["channel_name"].startswith("sofia/") and "@" in leg.variables["channel_name"]


def test_given_a_parsed_document_instead_of_a_body_then_records_are_made_from_it():
    documents = [json.loads(path.read_text()) for path in cdr_files("ringgroup_answered")]
    [record] = records_from_cdrs(documents, accounts())
    assert record.external_id == esl_records("ringgroup_answered")[0].external_id


def variables_of_sample() -> dict:
    return json.loads(sample().read_text())["variables"]


def with_changes(**parts) -> bytes:
    document = json.loads(sample().read_text())
    for key, value in parts.items():
        if value is None:
            document.pop(key, None)
        else:
            document[key] = value
    return json.dumps(document).encode()


def bad_times() -> bytes:
    document = json.loads(sample().read_text())
    document["callflow"][0]["times"]["answered_time"] = "soon"
    return json.dumps(document).encode()


@pytest.mark.parametrize("body,message", [
    (b"", "is empty"),
    (b"   \n", "is empty"),
    (b"cdr=", "is empty"),
    (b"\xff\xfe{}", "is not UTF-8 text (byte 0)"),
    (b"<xml/>", "neither JSON, URL-encoded JSON nor base64 JSON (it starts '<xml/>')"),
    (b"{\"variables\": ", "is not valid JSON: Expecting value: line 1 column 14"),
    (b"%7B%22variables%22", "is not valid JSON"),
    (b"[1, 2]", "is a JSON list, not an object"),
    (b"{\"callflow\": []}", "has no `variables` object"),
    (b"{\"variables\": {\"direction\": \"inbound\"}}", "has no variables.uuid"),
    (with_changes(callflow=None), "has no `callflow` list"),
    (with_changes(callflow=[]), "has no `callflow` list"),
    (with_changes(callflow=[{"times": {}}]), "callflow[0] has no caller_profile"),
    (bad_times(), "callflow[0].times.answered_time is 'soon', not microseconds"),
    (with_changes(variables=dict(variables_of_sample(), direction="sideways")),
     "variables.direction is 'sideways', not inbound or outbound"),
    (with_changes(variables=dict(variables_of_sample(), end_uepoch="later")),
     "variables.end_uepoch is 'later', not microseconds"),
])
def test_given_a_malformed_body_then_cdr_error_says_what_is_wrong(body, message):
    with pytest.raises(CdrError) as caught:
        parse_cdr(body, "x.cdr.json")
    assert message in str(caught.value) and "x.cdr.json" in str(caught.value)


def test_given_a_cdr_error_then_it_names_the_leg_when_known():
    with pytest.raises(CdrError, match=r"CDR [0-9a-f-]{36} \(spool/x\.cdr\.json\): callflow\[0\]"):
        leg_of(json.loads(with_changes(callflow=[{"times": {}}])), "spool/x.cdr.json")
    with pytest.raises(CdrError, match=r"^CDR is empty$"):
        cdr_document(b"")


# --- queueing --------------------------------------------------------------------------------------
def test_given_records_with_a_recording_then_held_for_it_with_its_url_only_when_recordings_are_stored():
    [record] = records_from_cdrs(legs_of("ringgroup_answered"), accounts())
    assert record.recording_path and record.recording_path.endswith(".wav")
    links = RecordingLinks("https://crm-bridge.example", TokenCodec(b"a-secret-of-16-bytes-or-more"))
    [stored] = new_calls([record], links, 123.0)
    name = "shop/%s/%s.wav" % (record.date[:10].replace("-", "/"), record.external_id)
    assert (stored.account, stored.external_id, stored.payload, stored.hold_until) == (
        record.account, record.external_id, dict(record.to_api(), recordUrl=links.url(name)), 123.0)
    assert (stored.recording.path, stored.recording.name, stored.recording.content_type) == (
        record.recording_path, name, "audio/wav")
    [plain] = new_calls([record], None, 123.0)
    assert plain.recording is None and plain.payload == record.to_api()
    odd = dataclasses.replace(record, recording_path="/tmp/call.flac")
    [unstorable] = new_calls([odd], links, 0.0)
    assert unstorable.recording is None and "recordUrl" not in unstorable.payload

"""What an operator reads: outages told in a few lines, one record per line, JSON on request."""

import json
import logging
import signal

from e2e import config_table, spawn_service
from test_service_e2e import running_service

from fs_crm.logformat import JsonFormatter, OneLineFormatter
from fs_crm.polling import wait_for
from fs_crm.sim.calls import first_leg, fresh_call
from fs_crm.sim.config import to_toml


def warnings_of(caplog, text):
    return [r for r in caplog.records if r.levelno >= logging.WARNING and text in r.getMessage()]


def test_given_crm_down_for_a_while_when_calls_flow_then_the_outage_is_a_few_lines_not_one_per_attempt(
        fakes, state_dir, caplog, monkeypatch):
    monkeypatch.setattr("fs_crm.outages.SUMMARY_INTERVAL", 0.5)
    fs, crm = fakes
    caplog.set_level(logging.INFO)
    caplog.set_level(logging.DEBUG, logger="fs_crm.crm.cards")
    with running_service(fs, crm, state_dir, card_max_age=1.5) as svc:
        crm.set_mode("unavailable")
        calls = [fresh_call("in_answered_ringgroup", "outage%d" % i) for i in range(5)]
        for call in calls:
            fs.play(call)
        assert wait_for(lambda: svc.cards.dropped >= 5 and svc.history.calls["shop", "deferred"] >= 5, timeout=15)
        crm.set_mode("ok")
        assert crm.wait_for(lambda: sorted(c["externalId"] for c in crm.calls) == sorted(map(first_leg, calls)),
                            timeout=20)
        # The card sender hears of the recovery with its next card.
        fs.play(fresh_call("out_answered", "outage-marker"))
        assert wait_for(lambda: len(warnings_of(caplog, "available again")) == 2, timeout=10)
    started = warnings_of(caplog, "shop: CRM unavailable")
    assert len(started) == 2, [r.getMessage() for r in started]  # cards' and history's first line
    assert warnings_of(caplog, "still unavailable after")  # the summary while it lasted
    retries = [r for r in caplog.records if "card not delivered yet" in r.getMessage()]
    assert retries and all(r.levelno == logging.DEBUG for r in retries)


def test_given_a_backlog_when_it_drains_then_progress_and_an_end_line_and_no_line_lists_every_uuid(
        fakes, state_dir, caplog):
    fs, crm = fakes
    caplog.set_level(logging.INFO)
    caplog.set_level(logging.DEBUG, logger="fs_crm.crm.history")
    with running_service(fs, crm, state_dir) as svc:
        crm.set_mode("down")
        calls = [fresh_call("in_missed", "backlog%d" % i) for i in range(120)]
        for call in calls:
            fs.play(call)
        assert wait_for(lambda: svc.outbox_stats.stats and svc.outbox_stats.stats.pending == 120, timeout=20)
        crm.set_mode("ok")
        svc.history.wake()
        assert crm.wait_for(lambda: len(crm.calls) == 120, timeout=30)
        assert wait_for(lambda: "backlog drained" in caplog.text, timeout=10)
    assert "a backlog of history is draining" in caplog.text
    drained = [r.getMessage() for r in caplog.records if "backlog drained" in r.getMessage()]
    assert len(drained) == 1 and drained[0].startswith("shop: backlog drained: ") and "nothing is waiting" in drained[0]
    longest = max(caplog.records, key=lambda r: len(r.getMessage())).getMessage()
    assert len(longest) < 1000, longest
    assert any("and 45 more" in r.getMessage() for r in caplog.records)  # 50 ids capped at 5


def test_given_a_traceback_when_formatted_then_one_line():
    try:
        raise ValueError("bad\nthing")
    except ValueError:
        record = logging.LogRecord("fs_crm.x", logging.ERROR, __file__, 1, "call %s account %s: failed\nbadly",
                                   ("3f1e0c52-aaaa-bbbb-cccc-000000000001", "shop"), exc_info=__import__("sys").exc_info())
    text = OneLineFormatter().format(record)
    assert "\n" not in text and "Traceback (most recent call last): |" in text and "ValueError: bad | thing" in text
    data = json.loads(JsonFormatter().format(record))
    assert data["call"] == "3f1e0c52-aaaa-bbbb-cccc-000000000001" and data["account"] == "shop"
    assert "\n" not in data["message"] and "\n" not in data["exception"]


def test_given_json_logging_when_fs_crm_runs_a_call_then_every_line_is_json_with_call_and_account(fakes, tmp_path):
    fs, crm = fakes
    table = config_table(fs, crm, tmp_path / "state")
    table["logging"] = {"format": "json"}
    path = tmp_path / "fs-crm.toml"
    path.write_text(to_toml(table))
    proc = spawn_service(path, tmp_path / "service.log")
    try:
        assert fs.wait_subscribed(timeout=20)
        call = fresh_call("in_answered_ringgroup", "json-log")
        fs.play(call)
        assert crm.wait_for(lambda: len(crm.calls) == 1, timeout=20)
        log = tmp_path / "service.log"
        assert wait_for(lambda: "finished" in log.read_text(), timeout=10)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    records = [json.loads(line) for line in (tmp_path / "service.log").read_text().splitlines()]
    finished = [r for r in records if r.get("call") == first_leg(call) and "finished" in r["message"]]
    assert finished and finished[0]["account"] == "shop" and finished[0]["level"] == "INFO"
    assert {"time", "level", "logger", "message"} <= set(records[0])

"""The durable history queue: idempotent adds, FIFO per account, deferral, set-aside, durability."""

import os
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import gevent
import pytest

from fs_crm.store.outbox import FILE_NAME, SCHEMA_VERSION, Outbox, OutboxError

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def call(external_id, phone="79001234567"):
    return {"date": "2024-05-01 10:00:00", "type": "in", "phone": phone, "result": "answered",
            "duration": 12, "durationWaiting": 3, "externalId": external_id}


def fill(outbox, account, count, prefix="call"):
    for i in range(count):
        assert outbox.add(account, "%s-%d" % (prefix, i), call("%s-%d" % (prefix, i)))


def test_given_added_calls_when_due_then_oldest_first_with_payload_intact(outbox, clock):
    fill(outbox, "acme", 3)

    items = outbox.due("acme")

    assert [i.external_id for i in items] == ["call-0", "call-1", "call-2"]
    assert items[0].payload == call("call-0")
    assert items[0].account == "acme"
    assert items[0].state == "pending"
    assert items[0].attempts == 0
    assert items[0].created_at == clock.now
    assert items[0].last_error is None


def test_given_more_than_limit_when_due_then_first_limit_only(outbox):
    fill(outbox, "acme", 7)

    assert [i.external_id for i in outbox.due("acme", limit=5)] == ["call-%d" % i for i in range(5)]


def test_given_two_accounts_when_due_then_each_sees_only_its_own(outbox):
    fill(outbox, "acme", 2)
    fill(outbox, "globex", 1)

    assert [i.external_id for i in outbox.due("globex")] == ["call-0"]
    assert len(outbox.due("acme")) == 2
    assert outbox.accounts_with_due() == ["acme", "globex"]


def test_given_pending_call_when_added_again_then_false_and_unchanged(outbox):
    assert outbox.add("acme", "call-1", call("call-1", phone="111"))

    assert outbox.add("acme", "call-1", call("call-1", phone="222")) is False

    [item] = outbox.due("acme")
    assert item.payload["phone"] == "111"


def test_given_set_aside_call_when_added_again_then_false(outbox):
    outbox.add("acme", "call-1", call("call-1"))
    outbox.set_aside(outbox.due("acme")[0].id, "bad phone")

    assert outbox.add("acme", "call-1", call("call-1")) is False
    assert outbox.stats().failed == 1
    assert outbox.stats().pending == 0


def test_given_delivered_call_when_added_again_then_false_until_pruned(outbox, clock):
    outbox.add("acme", "call-1", call("call-1"))
    outbox.mark_delivered([outbox.due("acme")[0].id])

    assert outbox.add("acme", "call-1", call("call-1")) is False
    assert outbox.due("acme") == []

    clock.now += 8 * 86400
    assert outbox.prune_delivered(clock.now - 7 * 86400) == 1
    assert outbox.add("acme", "call-1", call("call-1")) is True


def test_given_same_external_id_in_another_account_when_added_then_queued(outbox):
    assert outbox.add("acme", "call-1", call("call-1"))
    assert outbox.add("globex", "call-1", call("call-1"))


def test_given_empty_ids_when_added_then_value_error(outbox):
    with pytest.raises(ValueError):
        outbox.add("", "call-1", call("call-1"))
    with pytest.raises(ValueError):
        outbox.add("acme", "", call(""))


def test_when_mark_delivered_then_removed_and_counted_as_delivered(outbox):
    fill(outbox, "acme", 3)
    ids = [i.id for i in outbox.due("acme")]

    outbox.mark_delivered(ids[:2])

    assert [i.external_id for i in outbox.due("acme")] == ["call-2"]
    stats = outbox.stats()
    assert stats.pending == 1
    assert stats.delivered_recently == 2


def test_when_deferred_then_not_due_until_delay_passed_and_error_kept(outbox, clock):
    fill(outbox, "acme", 2)
    ids = [i.id for i in outbox.due("acme")]

    outbox.defer(ids, 30.0, "HTTP 503: rate limited")

    assert outbox.due("acme") == []
    assert outbox.accounts_with_due() == []
    assert outbox.next_due_at() == clock.now + 30.0
    clock.now += 30.0
    items = outbox.due("acme")
    assert [i.external_id for i in items] == ["call-0", "call-1"]
    assert items[0].attempts == 1
    assert items[0].last_error == "HTTP 503: rate limited"


def test_given_deferred_head_when_newer_call_added_then_newer_does_not_overtake(outbox, clock):
    fill(outbox, "acme", 2)
    outbox.defer([i.id for i in outbox.due("acme")], 10.0, "down")
    outbox.add("acme", "late", call("late"))

    assert outbox.due("acme") == []
    assert outbox.next_due_at("acme") == clock.now + 10.0
    clock.now += 10.0
    assert [i.external_id for i in outbox.due("acme")] == ["call-0", "call-1", "late"]


def test_given_one_account_deferred_when_next_due_at_then_other_account_counts(outbox, clock):
    fill(outbox, "acme", 1)
    fill(outbox, "globex", 1)
    outbox.defer([outbox.due("acme")[0].id], 10.0, "down")

    assert outbox.next_due_at() == clock.now
    assert outbox.next_due_at("acme") == clock.now + 10.0
    assert outbox.accounts_with_due() == ["globex"]


def test_given_empty_outbox_then_nothing_due(outbox):
    assert outbox.next_due_at() is None
    assert outbox.accounts_with_due() == []
    assert outbox.stats().oldest_pending_at is None


def test_when_set_aside_then_listed_as_failed_and_not_due(outbox):
    fill(outbox, "acme", 3)
    middle = outbox.due("acme")[1]

    outbox.set_aside(middle.id, "HTTP 400: calls[0][phone] is invalid")

    assert [i.external_id for i in outbox.due("acme")] == ["call-0", "call-2"]
    [failed] = outbox.failed()
    assert failed.external_id == "call-1"
    assert failed.state == "failed"
    assert failed.last_error == "HTTP 400: calls[0][phone] is invalid"
    assert failed.payload == call("call-1")


def test_when_retry_failed_then_pending_again_and_due_now(outbox, clock):
    fill(outbox, "acme", 2)
    fill(outbox, "globex", 1)
    for account in ("acme", "globex"):
        for item in outbox.due(account):
            outbox.set_aside(item.id, "refused")

    assert outbox.retry_failed("acme") == 2
    assert [i.external_id for i in outbox.due("acme")] == ["call-0", "call-1"]
    assert outbox.due("globex") == []
    assert outbox.retry_failed() == 1
    assert outbox.failed() == []


def test_stats_count_pending_failed_oldest_and_per_account(outbox, clock):
    first_at = clock.now
    fill(outbox, "acme", 3)
    clock.now += 5
    fill(outbox, "globex", 2)
    outbox.set_aside(outbox.due("globex")[0].id, "refused")

    stats = outbox.stats()

    assert (stats.pending, stats.failed) == (4, 1)
    assert stats.oldest_pending_at == first_at
    assert stats.pending_by_account == {"acme": 3, "globex": 1}
    assert stats.failed_by_account == {"globex": 1}


def test_given_delivered_long_ago_when_stats_then_not_recent(outbox, clock):
    fill(outbox, "acme", 1)
    outbox.mark_delivered([outbox.due("acme")[0].id])
    clock.now += 2 * 3600

    assert outbox.stats().delivered_recently == 0
    assert outbox.stats(recent=3 * 3600).delivered_recently == 1


def test_given_data_when_closed_and_reopened_then_everything_is_there(state_dir, clock):
    path = state_dir / FILE_NAME
    box = Outbox(path, clock=clock)
    fill(box, "acme", 3)
    ids = [i.id for i in box.due("acme")]
    box.mark_delivered(ids[:1])
    box.defer(ids[1:2], 60.0, "down")
    box.set_aside(ids[2], "refused")
    box.close()

    again = Outbox(path, clock=clock)
    try:
        assert again.add("acme", "call-0", call("call-0")) is False  # still remembered as delivered
        assert again.next_due_at("acme") == clock.now + 60.0
        assert [i.external_id for i in again.failed()] == ["call-2"]
        clock.now += 60
        [item] = again.due("acme")
        assert (item.external_id, item.attempts, item.last_error) == ("call-1", 1, "down")
    finally:
        again.close()


def test_given_directory_when_opened_then_file_inside_it(state_dir):
    with Outbox(state_dir) as box:
        box.add("acme", "call-1", call("call-1"))
    assert (state_dir / FILE_NAME).exists()


def test_file_uses_wal_full_sync_and_schema_version(outbox):
    db = sqlite3.connect(str(outbox.path))
    try:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    finally:
        db.close()
    # synchronous is per connection: ask the outbox's own.
    assert outbox._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL


def test_given_process_killed_after_adds_returned_when_reopened_then_all_calls_there(state_dir):
    count = 40
    path = state_dir / FILE_NAME
    script = textwrap.dedent("""
        import sys, time
        from pathlib import Path
        from fs_crm.store.outbox import Outbox
        box = Outbox(Path(sys.argv[1]))
        for i in range(int(sys.argv[2])):
            box.add("acme", "call-%d" % i, {"externalId": "call-%d" % i})
            print(i, flush=True)
        time.sleep(60)
    """)
    env = dict(os.environ, PYTHONPATH=str(PROJECT_ROOT))
    proc = subprocess.Popen([sys.executable, "-c", script, str(path), str(count)], stdout=subprocess.PIPE,
                            cwd=str(PROJECT_ROOT), env=env, text=True)
    try:
        lines = [proc.stdout.readline() for _ in range(count)]
        assert lines[-1].strip() == str(count - 1)
    finally:
        proc.kill()  # SIGKILL: no close(), no checkpoint, no atexit
        proc.wait(timeout=10)
        proc.stdout.close()
    assert proc.returncode == -9
    assert Path(str(path) + "-wal").exists()  # the calls were only in the WAL when it died

    with Outbox(path) as box:
        items = box.due("acme", limit=count + 10)
    assert [i.external_id for i in items] == ["call-%d" % i for i in range(count)]


def test_given_many_greenlets_adding_at_once_then_every_call_is_kept(outbox):
    def add_many(prefix):
        for i in range(20):
            outbox.add("acme", "%s-%d" % (prefix, i), call("%s-%d" % (prefix, i)))
            gevent.sleep(0)

    gevent.joinall([gevent.spawn(add_many, "g%d" % n) for n in range(5)], raise_error=True)

    assert outbox.stats().pending == 100


def test_given_garbage_file_when_opened_then_outbox_error_names_file(state_dir):
    path = state_dir / FILE_NAME
    path.write_bytes(b"this is not a database" * 100)

    with pytest.raises(OutboxError, match=str(path)):
        Outbox(path)


def test_given_newer_schema_when_opened_then_outbox_error(state_dir):
    path = state_dir / FILE_NAME
    db = sqlite3.connect(str(path))
    db.execute("PRAGMA user_version = %d" % (SCHEMA_VERSION + 1))
    db.close()

    with pytest.raises(OutboxError, match="newer"):
        Outbox(path)


def test_given_closed_outbox_when_used_then_outbox_error(state_dir):
    box = Outbox(state_dir / FILE_NAME)
    box.close()

    with pytest.raises(OutboxError, match="closed"):
        box.add("acme", "call-1", call("call-1"))


# --- calls held for their recording --------------------------------------------------------------

def hold(outbox, clock, external_id="c-rec", wait=600.0):
    return outbox.add_with_recording("shop", external_id, call(external_id), path="/srv/rec/%s.wav" % external_id,
                                     name="shop/2026/11/26/%s.wav" % external_id, content_type="audio/wav",
                                     hold_until=clock.now + wait)


def test_given_call_held_for_recording_when_due_then_not_sent_and_not_blocking_later_calls(outbox, clock):
    assert hold(outbox, clock)
    outbox.add("shop", "c-plain", call("c-plain"))
    assert [i.external_id for i in outbox.due("shop")] == ["c-plain"]
    stats = outbox.stats()
    assert (stats.held, stats.recordings, stats.pending) == (1, 1, 1)


def test_given_recording_stored_when_finished_then_call_released_with_record_url(outbox, clock):
    hold(outbox, clock)
    job = outbox.due_recordings()[0]
    assert (job.path, job.name, job.content_type) == ("/srv/rec/c-rec.wav", "shop/2026/11/26/c-rec.wav", "audio/wav")
    assert outbox.finish_recording(job, {"recordUrl": "https://x/records/t"}) is True
    item = outbox.due("shop")[0]
    assert item.payload["recordUrl"] == "https://x/records/t"
    assert outbox.due_recordings() == [] and outbox.stats().held == 0


def test_given_storage_down_past_max_wait_when_expired_then_call_released_without_url(outbox, clock):
    hold(outbox, clock, wait=600)
    job = outbox.due_recordings()[0]
    outbox.defer_recording(job.id, 30, "S3 unreachable")
    assert outbox.expired_holds() == []
    clock.now += 601
    expired = outbox.expired_holds()
    assert [i.external_id for i in expired] == ["c-rec"]
    assert outbox.release("shop", "c-rec") is True
    assert "recordUrl" not in outbox.due("shop")[0].payload
    # The recording upload goes on; storing it later no longer changes the call.
    assert outbox.finish_recording(outbox.due_recordings()[0], {"recordUrl": "late"}) is False
    assert "recordUrl" not in outbox.due("shop")[0].payload


def test_given_held_call_when_added_again_then_ignored(outbox, clock):
    assert hold(outbox, clock)
    assert not hold(outbox, clock)
    assert not outbox.add("shop", "c-rec", call("c-rec"))
    assert len(outbox.due_recordings()) == 1

"""fs_crm.greenlets.spawn: a crash is logged with its traceback and handed to the owner's decision."""

import logging

import gevent
import gevent.pool

from fs_crm.greenlets import spawn


def _boom(what):
    raise RuntimeError("boom: %s" % what)


def test_given_greenlet_raises_when_spawned_then_crash_logged_with_traceback_and_owner_told(caplog):
    told = []
    with caplog.at_level(logging.ERROR, logger="fs_crm.greenlets"):
        greenlet = spawn("worker-1", _boom, "disk", on_crash=told.append)
        greenlet.join()
        gevent.sleep(0)  # links run on the next loop turn
    assert told == [greenlet]
    record = next(r for r in caplog.records if r.name == "fs_crm.greenlets")
    assert "worker-1 crashed" in record.getMessage() and "boom: disk" in record.getMessage()
    assert record.exc_info and record.exc_info[0] is RuntimeError


def test_given_pool_and_start_false_when_spawned_then_caller_starts_it_in_the_pool():
    pool = gevent.pool.Pool(1)
    greenlet = spawn("card-x", lambda: "done", start=False)
    assert not greenlet.started
    pool.start(greenlet)
    assert greenlet.get(timeout=5) == "done"
    assert greenlet.name == "card-x"


def test_given_service_worker_crashes_when_running_then_service_stops_and_reports_failure(fakes, state_dir, caplog):
    from e2e import make_config

    from fs_crm.service import Service

    fs, crm = fakes
    svc = Service(make_config(fs, crm, state_dir))
    svc.start()
    try:
        assert fs.wait_subscribed(timeout=10)
        svc._spawn("doomed", lambda: _boom("service"))
        svc.wait()  # the crash stops the service rather than leaving a zombie daemon
        assert isinstance(svc.failure, RuntimeError)
        assert "doomed crashed" in caplog.text
    finally:
        svc.stop()

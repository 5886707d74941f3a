"""/metrics and /healthz of a running service, over HTTP, against the fakes."""

import contextlib

import requests
from e2e import config_table
from prometheus_client.parser import text_string_to_metric_families

from fs_crm import __version__
from fs_crm.config import parse_config
from fs_crm.polling import wait_for
from fs_crm.service import Service
from fs_crm.sim import free_port
from fs_crm.sim.calls import first_leg, fresh_call


@contextlib.contextmanager
def running(fs, crm, state_dir, **health):
    port = free_port()
    table = config_table(fs, crm, state_dir, http_port=port, retry_min_delay=0.2, retry_max_delay=0.5)
    table["health"] = health
    svc = Service(parse_config("<test>", table, env={}))
    svc.start()
    try:
        assert fs.wait_subscribed(timeout=10)
        yield svc, "http://127.0.0.1:%d" % port
    finally:
        svc.stop()


def samples(base):
    answer = requests.get(base + "/metrics", timeout=5)
    assert answer.status_code == 200
    assert answer.headers["Content-Type"].startswith("text/plain")
    out = {}
    for family in text_string_to_metric_families(answer.text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def healthz(base):
    answer = requests.get(base + "/healthz", timeout=5)
    return answer.status_code, answer.json()


def test_given_calls_handled_when_metrics_scraped_then_esl_cards_history_and_crm_latency_are_there(
        fakes, state_dir):
    fs, crm = fakes
    with running(fs, crm, state_dir) as (svc, base):
        call = fresh_call("in_answered_ringgroup", "metrics")
        fs.play(call)
        assert crm.wait_for(lambda: [c["externalId"] for c in crm.calls] == [first_leg(call)], timeout=10)
        assert wait_for(lambda: samples(base).get(("fs_crm_history_calls_total",
                                                    (("account", "shop"), ("outcome", "delivered")))) == 1, timeout=5)
        got = samples(base)
        assert got[("fs_crm_esl_connected", ())] == 1
        assert 0 < got[("fs_crm_esl_events_total", ())] <= len(call)  # those it subscribed to
        assert got[("fs_crm_calls_in_progress", ())] == 0
        assert got[("fs_crm_outbox_pending_calls", (("account", "shop"),))] == 0
        assert got[("fs_crm_cards_total", (("account", "shop"), ("outcome", "sent"), ("type", "in")))] >= 1
        assert got[("fs_crm_history_uploads_total", (("account", "shop"), ("outcome", "accepted")))] == 1
        upload_route = (("account", "shop"), ("outcome", "ok"), ("route", "/api/v5/telephony/calls/upload"))
        assert got[("fs_crm_crm_request_seconds_count", upload_route)] == 1
        assert got[("fs_crm_state_disk_failing", ())] == 0


def test_given_crm_down_longer_than_max_pending_age_when_healthz_then_503_names_the_account_until_it_is_back(
        fakes, state_dir):
    fs, crm = fakes
    with running(fs, crm, state_dir, max_pending_age=1) as (svc, base):
        assert healthz(base)[0] == 200
        crm.set_mode("unavailable")
        call = fresh_call("in_missed", "pending-age")
        fs.play(call)
        assert wait_for(lambda: healthz(base)[0] == 503, timeout=10)
        status, body = healthz(base)
        assert body["healthy"] is False and body["version"] == __version__
        assert any(reason.startswith("account shop: history has waited") for reason in body["reasons"]), body
        shop = body["accounts"]["shop"]
        assert shop["pending"] == 1 and shop["last_history_error"]["error"] and shop["last_history_error"]["at"]
        pending = samples(base)[("fs_crm_outbox_pending_calls", (("account", "shop"),))]
        assert pending == 1
        assert samples(base)[("fs_crm_outbox_oldest_pending_age_seconds", (("account", "shop"),))] >= 1

        crm.set_mode("ok")
        assert crm.wait_for(lambda: len(crm.calls) == 1, timeout=20)
        assert wait_for(lambda: healthz(base)[0] == 200, timeout=10)
        body = healthz(base)[1]
        assert body["reasons"] == [] and body["accounts"]["shop"]["last_upload_ok_at"].endswith("+00:00")


def test_given_freeswitch_gone_when_healthz_then_503_says_the_event_socket_is_down(fakes, state_dir):
    fs, crm = fakes
    with running(fs, crm, state_dir) as (svc, base):
        assert healthz(base)[0] == 200
        fs.stop()
        assert wait_for(lambda: healthz(base)[0] == 503, timeout=10)
        reasons = healthz(base)[1]["reasons"]
        assert any(r.startswith("FreeSWITCH event socket down") for r in reasons), reasons
        assert samples(base)[("fs_crm_esl_connected", ())] == 0

"""A call the CRM refused for a config mistake is rescued: fix the config, restart, `fs-crm outbox
--retry ID`; the daemon sends it within a second, rendered from the fixed config."""

import json
import subprocess
import sys

from e2e import API_KEY, config_table
from test_service_e2e import history_ids

from fs_crm.config import parse_config
from fs_crm.polling import wait_for
from fs_crm.service import Service
from fs_crm.sim.calls import first_leg, fresh_call
from fs_crm.sim.config import to_toml


def fs_crm(*argv):
    return subprocess.run([sys.executable, "-m", "fs_crm", *argv], capture_output=True, text=True, timeout=60,
                          env={"FS_CRM_ACCOUNT_SHOP_API_KEY": API_KEY, "PATH": "/usr/bin:/bin"})


def service_with_store_code(fs, crm, state_dir, tmp_path, code):
    table = config_table(fs, crm, state_dir)
    table["accounts"][0]["external_phones"] = {code: "+74999999999", "shop2": "+74998888888"}
    (tmp_path / "fs-crm.toml").write_text(to_toml(table))
    svc = Service(parse_config(str(tmp_path / "fs-crm.toml"), table, env={}))
    svc.start()
    assert fs.wait_subscribed(timeout=10)
    return svc


def test_given_call_refused_for_a_wrong_store_code_when_config_fixed_and_retried_then_the_corrected_call_arrives(
        fakes, state_dir, tmp_path):
    fs, crm = fakes
    svc = service_with_store_code(fs, crm, state_dir, tmp_path, "shop-typo")
    try:
        call = fresh_call("in_answered_ringgroup", "rescue")
        fs.play(call)
        assert wait_for(lambda: svc.outbox_stats.stats and svc.outbox_stats.stats.failed == 1, timeout=15)
    finally:
        svc.stop()
    config = str(tmp_path / "fs-crm.toml")
    listed = fs_crm("outbox", "-c", config)
    assert listed.returncode == 0, listed.stderr
    line = next(line for line in listed.stdout.splitlines() if first_leg(call) in line)
    assert "Site with code shop-typo not found" in line and "Europe/Moscow" in line and " ago " in line
    row_id = line.split()[0]
    exported = [json.loads(x) for x in fs_crm("outbox", "-c", config, "--export").stdout.splitlines()]
    assert [(e["externalId"], e["call"]["site"]) for e in exported] == [(first_leg(call), "shop-typo")]

    svc = service_with_store_code(fs, crm, state_dir, tmp_path, "shop1")  # the fix, and a restart
    try:
        assert crm.calls == []
        retried = fs_crm("outbox", "-c", config, "--retry", row_id)
        assert retried.returncode == 0 and "requeued 1" in retried.stdout, retried.stdout + retried.stderr
        assert crm.wait_for(lambda: history_ids(crm) == [first_leg(call)], timeout=5)
        assert crm.calls[0]["site"] == "shop1" and crm.calls[0]["externalPhone"] == "+74999999999"
    finally:
        svc.stop()


def test_given_calls_set_aside_when_dropped_then_gone_and_retry_needs_ids_or_all(fakes, state_dir, tmp_path):
    fs, crm = fakes
    svc = service_with_store_code(fs, crm, state_dir, tmp_path, "shop-typo")
    try:
        calls = [fresh_call("in_answered_ringgroup", "drop%d" % i) for i in range(2)]
        for call in calls:
            fs.play(call)
        assert wait_for(lambda: svc.outbox_stats.stats and svc.outbox_stats.stats.failed == 2, timeout=15)
    finally:
        svc.stop()
    config = str(tmp_path / "fs-crm.toml")
    bare = fs_crm("outbox", "-c", config, "--retry")
    assert bare.returncode == 2 and "--all" in bare.stderr
    dropped = fs_crm("outbox", "-c", config, "--drop", first_leg(calls[0]), "no-such-call")
    assert dropped.returncode == 0
    assert "dropped %s" % first_leg(calls[0]) in dropped.stdout and "1 of the ids named no call" in dropped.stdout
    assert "set aside (failed): 1" in dropped.stdout
    everything = fs_crm("outbox", "-c", config, "--retry", "--all")
    assert "requeued 1" in everything.stdout and "pending: 1" in everything.stdout

"""Shared pieces of the end-to-end tests: real fakes on loopback ports, configs, fresh calls."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from fs_crm.config import parse_config
from fs_crm.sim.fake_crm import FakeCrm
from fs_crm.sim.fake_freeswitch import FakeFreeswitch

API_KEY = "e2e-key"
EXTENSIONS = {"1": "100", "2": "200", "3": "300"}
PHONES = {"shop1": "+74999999999", "shop2": "+74998888888"}


def config_table(fs: FakeFreeswitch, crm: FakeCrm, state_dir: Path, **delivery) -> dict:
    return {
        "freeswitch": {"host": fs.host, "port": fs.port, "password": "ClueCon", "command_timeout": 2.0,
                       "reconnect_min_delay": 0.05, "reconnect_max_delay": 0.5},
        "http": {"listen": "127.0.0.1:0", "public_url": "http://127.0.0.1:8090"},
        "state": {"dir": str(state_dir)},
        "delivery": {"retry_min_delay": 0.05, "retry_max_delay": 0.3, **delivery},
        "accounts": [{"name": "shop", "crm_url": crm.url, "api_key": API_KEY, "client_id": "client-1",
                      "domain": "pbx.test", "timezone": "Europe/Moscow", "extensions": EXTENSIONS,
                      "external_phones": PHONES}],
    }


def make_config(fs, crm, state_dir, storage=None, http_port=0, **delivery):
    table = config_table(fs, crm, state_dir, **delivery)
    if storage is not None:
        table["storage"] = storage
    table["http"] = {"listen": "127.0.0.1:%d" % http_port, "public_url": "http://127.0.0.1:%d" % http_port}
    return parse_config("<e2e>", table, env={})


def write_toml(path: Path, fs, crm, state_dir) -> Path:
    """The same config as an operator would write it (the API key comes from the environment)."""
    path.write_text(f"""
[freeswitch]
host = "{fs.host}"
port = {fs.port}
password = "ClueCon"
command_timeout = 2.0
reconnect_min_delay = 0.05
reconnect_max_delay = 0.5

[http]
listen = "127.0.0.1:0"
public_url = "http://127.0.0.1:8090"

[state]
dir = "{state_dir}"

[delivery]
retry_min_delay = 0.05
retry_max_delay = 0.3

[[accounts]]
name = "shop"
crm_url = "{crm.url}"
client_id = "client-1"
domain = "pbx.test"
timezone = "Europe/Moscow"
[accounts.extensions]
"1" = "100"
"2" = "200"
"3" = "300"
[accounts.external_phones]
shop1 = "+74999999999"
shop2 = "+74998888888"
""")
    return path


def start_fakes():
    crm = FakeCrm(api_keys={API_KEY: "shop"}, known_codes={"100", "200", "300"},
                  known_sites={"shop1", "shop2"}).start()
    fs = FakeFreeswitch().start()
    return fs, crm


def spawn_service(config_path: Path, log_path: Path) -> subprocess.Popen:
    env = dict(os.environ, FS_CRM_ACCOUNT_SHOP_API_KEY=API_KEY)
    log = open(log_path, "ab")
    return subprocess.Popen([sys.executable, "-m", "fs_crm", "--log-level", "INFO", "run", "-c", str(config_path)],
                            stdout=log, stderr=subprocess.STDOUT, env=env)


def wait_until(predicate, timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()

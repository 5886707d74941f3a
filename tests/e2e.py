"""Shared pieces of the end-to-end tests: real fakes on loopback ports, configs, fresh calls."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from fs_crm.config import parse_config
from fs_crm.sim.config import sim_config, to_toml
from fs_crm.sim.fake_crm import FakeCrm
from fs_crm.sim.fake_freeswitch import FakeFreeswitch

API_KEY = "e2e-key"


def config_table(fs: FakeFreeswitch, crm: FakeCrm, state_dir: Path, storage: dict | None = None, http_port: int = 0,
                 **delivery) -> dict:
    return sim_config(fs.host, fs.port, crm.url, state_dir, api_key=API_KEY, storage=storage, http_port=http_port,
                      **delivery)


def make_config(fs, crm, state_dir, storage=None, http_port=0, **delivery):
    return parse_config("<e2e>", config_table(fs, crm, state_dir, storage, http_port, **delivery), env={})


def write_toml(path: Path, fs, crm, state_dir) -> Path:
    """The same config as an operator would write it (the API key comes from the environment)."""
    path.write_text(to_toml(config_table(fs, crm, state_dir)))
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

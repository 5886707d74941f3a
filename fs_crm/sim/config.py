"""The simulated PBX's configuration (as the demo, the tests and the benchmarks run it), as a
dict for parse_config() or as the TOML an operator would write."""

from __future__ import annotations

import json
from pathlib import Path

# The PBX of the captures (fs_crm/sim/captures/pbx/README.md).
DOMAIN = "pbx.test"
EXTENSIONS = {"1": "100", "2": "200", "3": "300"}
PHONES = {"shop1": "+74999999999", "shop2": "+74998888888"}


def sim_config(fs_host: str, fs_port: int, crm_url: str, state_dir: Path, *, api_key: str,
               account: str = "shop", client_id: str = "client-1", http_port: int = 0,
               storage: dict | None = None, **delivery) -> dict:
    table = {
        "freeswitch": {"host": fs_host, "port": fs_port, "password": "ClueCon", "command_timeout": 2.0,
                       "reconnect_min_delay": 0.05, "reconnect_max_delay": 0.5},
        "http": {"listen": "127.0.0.1:%d" % http_port, "public_url": "http://127.0.0.1:%d" % http_port},
        "state": {"dir": str(state_dir)},
        "delivery": {"retry_min_delay": 0.05, "retry_max_delay": 0.3, **delivery},
        # Port 0: simulated services never fight over the real router's 8084.
        "routing": {"listen": "127.0.0.1:0"},
        "accounts": [{"name": account, "crm_url": crm_url, "api_key": api_key, "client_id": client_id,
                      "domain": DOMAIN, "timezone": "Europe/Moscow", "extensions": dict(EXTENSIONS),
                      "external_phones": dict(PHONES)}],
    }
    if storage is not None:
        table["storage"] = storage
    return table


def to_toml(table: dict, leave_out: tuple[str, ...] = ("api_key",)) -> str:
    """The config as a TOML file; secrets named in `leave_out` are left for the environment."""
    lines: list[str] = []

    def value(v) -> str:
        return ("true" if v else "false") if isinstance(v, bool) else json.dumps(v)

    def write(name: str, data: dict, array: bool = False) -> None:
        lines.append("[[%s]]" % name if array else "[%s]" % name)
        nested = {k: v for k, v in data.items() if isinstance(v, dict)}
        lines.extend("%s = %s" % (json.dumps(k) if not k.isidentifier() else k, value(v))
                     for k, v in data.items() if not isinstance(v, dict) and k not in leave_out)
        for key, sub in nested.items():
            lines.append("[%s.%s]" % (name, key))
            lines.extend("%s = %s" % (json.dumps(k), value(v)) for k, v in sub.items())
        lines.append("")

    for name, data in table.items():
        for item in data if isinstance(data, list) else [data]:
            write(name, item, array=isinstance(data, list))
    return "\n".join(lines)

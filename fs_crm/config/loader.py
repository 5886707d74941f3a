"""Loading: the operator's TOML file and the environment's secrets, section by section, into a Config."""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path
from typing import Any, Mapping

from fs_crm.config.accounts import load_accounts
from fs_crm.config.model import (
    CdrConfig,
    Config,
    DeliveryConfig,
    FreeswitchConfig,
    HealthConfig,
    HttpConfig,
    RoutingConfig,
    StateConfig,
    StorageConfig,
)
from fs_crm.config.reader import ConfigError, TableReader, parse_listen, parse_url

PASSWORD_ENV = "FS_CRM_FREESWITCH_PASSWORD"
CDR_PASSWORD_ENV = "FS_CRM_CDR_PASSWORD"

_SECTIONS = {"freeswitch", "http", "state", "delivery", "accounts", "logging", "storage", "routing", "health", "cdr"}


def parse_config(path: str, data: Mapping[str, Any], env: Mapping[str, str] | None = None) -> Config:
    env = os.environ if env is None else env
    unknown = sorted(set(data) - _SECTIONS)
    if unknown:
        raise ConfigError(path, unknown[0], None, "unknown section (known: %s)" % ", ".join(sorted(_SECTIONS)))

    r = TableReader(path, "freeswitch", data.get("freeswitch", {}))
    d = FreeswitchConfig()
    password = env.get(PASSWORD_ENV) or r.str("password", d.password)  # read the key even when overridden
    r.used.add("password")
    freeswitch = FreeswitchConfig(
        host=r.str("host", d.host),
        port=r.number("port", d.port, minimum=1, integer=True),
        password=password,
        command_timeout=r.number("command_timeout", d.command_timeout, minimum=0.1),
        connect_timeout=r.number("connect_timeout", d.connect_timeout, minimum=0.1),
        reconnect_min_delay=r.number("reconnect_min_delay", d.reconnect_min_delay, minimum=0.01),
        reconnect_max_delay=r.number("reconnect_max_delay", d.reconnect_max_delay, minimum=0.01),
    )
    r.check_unknown()

    r = TableReader(path, "http", data.get("http", {}))
    d_http = HttpConfig()
    listen = r.str("listen", "%s:%d" % (d_http.listen_host, d_http.listen_port))
    host, port = parse_listen(r, listen)
    http = HttpConfig(listen_host=host, listen_port=port,
                      public_url=parse_url(r, "public_url", r.str("public_url", d_http.public_url)))
    r.check_unknown()

    r = TableReader(path, "state", data.get("state", {}))
    state = StateConfig(dir=Path(r.str("dir", str(StateConfig.dir))),
                        max_calls_in_progress=r.number("max_calls_in_progress", StateConfig.max_calls_in_progress,
                                                       minimum=1, integer=True))
    r.check_unknown()

    r = TableReader(path, "delivery", data.get("delivery", {}))
    dd = DeliveryConfig()
    delivery = DeliveryConfig(**{
        f: r.number(f, getattr(dd, f), minimum=0.001) for f in DeliveryConfig.__dataclass_fields__
    })
    r.check_unknown()

    r = TableReader(path, "logging", data.get("logging", {}))
    level = r.str("level", "INFO").upper()
    if level not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
        raise r.error("level", "must be one of DEBUG, INFO, WARNING, ERROR, got %r" % level)
    log_format = r.str("format", "text")
    if log_format not in ("text", "json"):
        raise r.error("format", "must be \"text\" or \"json\", got %r" % log_format)
    r.check_unknown()

    storage = _load_storage(TableReader(path, "storage", data.get("storage", {})), state.dir)

    r = TableReader(path, "routing", data.get("routing", {}))
    d_routing = RoutingConfig()
    host, port = parse_listen(r, r.str("listen", "%s:%d" % (d_routing.listen_host, d_routing.listen_port)))
    routing = RoutingConfig(listen_host=host, listen_port=port, enabled=r.bool("enabled", True),
                            manager_timeout=r.number("manager_timeout", d_routing.manager_timeout, minimum=0.05))
    r.check_unknown()

    r = TableReader(path, "cdr", data.get("cdr", {}))
    cdr_password = env.get(CDR_PASSWORD_ENV) or r.str("password", None)
    r.used.add("password")
    allow = r.get("allow", [freeswitch.host], (list,), "a list of addresses")
    if not allow or not all(isinstance(a, str) and a.strip() for a in allow):
        raise r.error("allow", "must be a non-empty list of addresses FreeSWITCH posts from, got %r" % (allow,))
    spool = r.str("spool_dir", None)
    cdr = CdrConfig(user=r.str("user", CdrConfig.user), password=cdr_password,
                    allow=tuple(a.strip() for a in allow), spool_dir=Path(spool) if spool else None)
    if ":" in cdr.user:
        raise r.error("user", "must not contain ':' (mod_json_cdr's cred is user:password)")
    r.check_unknown()

    r = TableReader(path, "health", data.get("health", {}))
    health = HealthConfig(max_pending_age=r.number("max_pending_age", HealthConfig.max_pending_age, minimum=1))
    r.check_unknown()

    accounts = load_accounts(path, data.get("accounts"), env)
    return Config(path=path, freeswitch=freeswitch, http=http, state=state, delivery=delivery,
                  accounts=accounts, log_level=level, storage=storage, routing=routing, health=health,
                  log_format=log_format, cdr=cdr)


def _load_storage(r: TableReader, state_dir: Path) -> StorageConfig:
    if not r.table:
        return StorageConfig()
    bucket = r.str("bucket", None)
    backend = r.str("backend", "s3" if bucket else None)
    if backend not in ("s3", "local"):
        raise r.error("backend", "must be \"s3\" or \"local\", got %r" % backend if backend
                      else "is required: set bucket (S3) or backend = \"local\"")
    if backend == "s3" and not bucket:
        raise r.error("bucket", "is required for S3 storage")
    endpoint_url = r.str("endpoint_url", None)
    if endpoint_url is not None:
        endpoint_url = parse_url(r, "endpoint_url", endpoint_url)
    prefix = r.str("prefix", "", non_empty=False).strip("/")
    if prefix and not re.fullmatch(r"[A-Za-z0-9_.\-/]+", prefix):
        raise r.error("prefix", "may hold only letters, digits and _ . - /, got %r" % prefix)
    directory = r.str("directory", None)
    if backend == "s3" and directory:
        raise r.error("directory", "is for backend = \"local\"; S3 storage uses bucket and prefix")
    secret = r.str("url_secret", None)
    if secret is not None and len(secret) < 16:
        raise r.error("url_secret", "must be at least 16 characters")
    config = StorageConfig(
        backend=backend, bucket=bucket, region=r.str("region", None), endpoint_url=endpoint_url, prefix=prefix,
        directory=(Path(directory) if directory else state_dir / "recordings") if backend == "local" else None,
        url_secret=secret, max_wait=r.number("max_wait", StorageConfig.max_wait, minimum=0),
        delete_local=r.bool("delete_local", True),
    )
    r.check_unknown()
    return config


def load_config(path: str | os.PathLike[str], env: Mapping[str, str] | None = None) -> Config:
    path = str(path)
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(path, "", None, "file not found") from None
    except OSError as exc:
        raise ConfigError(path, "", None, "cannot read: %s" % exc.strerror) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(path, "", None, "not valid TOML: %s" % exc) from None
    return parse_config(path, data, env)

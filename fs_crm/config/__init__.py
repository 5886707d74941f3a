"""Operator configuration: one TOML file (plus secrets from the environment) into frozen dataclasses.

Layers, lowest first: code defaults < the operator's TOML file < environment (secrets) < CLI flags.
Every error names the file, the section and the key, so an operator can fix it without reading code.

`model` holds the dataclasses, `reader` the typed table access and ConfigError, `loader` the service-wide
sections and the file, `accounts` the [[accounts]] tables (with `numbers` and `timezones` behind them).
"""

from fs_crm.config.accounts import api_key_env_name
from fs_crm.config.loader import load_config, parse_config
from fs_crm.config.model import (
    AccountConfig,
    CdrConfig,
    Config,
    DeliveryConfig,
    FreeswitchConfig,
    HttpConfig,
    MissedCallTasks,
    RoutingConfig,
    StorageConfig,
)
from fs_crm.config.numbers import looks_reversed
from fs_crm.config.reader import ConfigError

# What the rest of fs-crm, the tests and the benches import from fs_crm.config.
__all__ = [
    "AccountConfig", "CdrConfig", "Config", "ConfigError", "DeliveryConfig", "FreeswitchConfig", "HttpConfig",
    "MissedCallTasks", "RoutingConfig", "StorageConfig", "api_key_env_name", "load_config", "looks_reversed",
    "parse_config",
]

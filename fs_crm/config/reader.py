"""Reading one TOML table: typed values, unknown keys, and the error that names file, section and key."""

from __future__ import annotations

import re
from typing import Any


class ConfigError(Exception):
    """The configuration cannot be used; the message names file, section and key."""

    def __init__(self, path: str, section: str, key: str | None, problem: str):
        where = "[%s]" % section if section else "top level"
        if key:
            where += " key %r" % key
        super().__init__("%s: %s: %s" % (path, where, problem))
        self.path, self.section, self.key = path, section, key


class TableReader:
    """Typed access to one TOML table that remembers where it is for error messages."""

    def __init__(self, path: str, section: str, table: Any):
        if not isinstance(table, dict):
            raise ConfigError(path, section, None, "must be a table")
        self.path, self.section, self.table = path, section, table
        self.used: set[str] = set()

    def error(self, key: str | None, problem: str) -> ConfigError:
        return ConfigError(self.path, self.section, key, problem)

    def get(self, key: str, default: Any, kinds: tuple[type, ...], kind_name: str) -> Any:
        self.used.add(key)
        if key not in self.table:
            if default is REQUIRED:
                raise self.error(key, "is required")
            return default
        value = self.table[key]
        if isinstance(value, bool) and bool not in kinds:
            raise self.error(key, "must be %s, got %r" % (kind_name, value))
        if not isinstance(value, kinds):
            raise self.error(key, "must be %s, got %r" % (kind_name, value))
        return value

    def bool(self, key: str, default: Any) -> bool:
        return self.get(key, default, (bool,), "true or false")

    def str(self, key: str, default: Any = None, *, non_empty: bool = True) -> str:
        value = self.get(key, default, (str,), "a string")
        if non_empty and isinstance(value, str) and not value.strip():
            raise self.error(key, "must not be empty")
        return value

    def number(self, key: str, default: Any, *, minimum: float = 0.0, integer: bool = False) -> Any:
        value = self.get(key, default, (int,) if integer else (int, float), "an integer" if integer else "a number")
        if value < minimum:
            raise self.error(key, "must be at least %s, got %r" % (minimum, value))
        return value

    def check_unknown(self) -> None:
        unknown = sorted(set(self.table) - self.used)
        if unknown:
            raise self.error(unknown[0], "unknown key (known: %s)" % ", ".join(sorted(self.used)))


REQUIRED = object()


def parse_listen(reader: TableReader, value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise reader.error("listen", "must be HOST:PORT, got %r" % value)
    return host.strip("[]"), int(port)


def parse_url(reader: TableReader, key: str, value: str) -> str:
    if not re.match(r"^https?://[^/\s]+", value):
        raise reader.error(key, "must be an http:// or https:// URL, got %r" % value)
    return value.rstrip("/")

"""Operator configuration: one TOML file (plus secrets from the environment) into frozen dataclasses.

Layers, lowest first: code defaults < the operator's TOML file < environment (secrets) < CLI flags.
Every error names the file, the section and the key, so an operator can fix it without reading code.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import json
import os
import re
import string
import tomllib
import urllib.parse
import zoneinfo
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from fs_crm.phones import canonical_phone, clean_phone, digits_of, is_country

PASSWORD_ENV = "FS_CRM_FREESWITCH_PASSWORD"
CDR_PASSWORD_ENV = "FS_CRM_CDR_PASSWORD"
# conf/fs-crm.example.toml's api_key is a reminder ("put-the-key-in-FS_CRM_ACCOUNT_SHOP_API_KEY"), never a
# key: the CRM would refuse it, so it is refused here, before anything starts.
EXAMPLE_API_KEY_PREFIX = "put-the-key-in-"
# conf/fs-crm.example.toml's clientId, and the one retailCRM's own documentation shows.
EXAMPLE_CLIENT_ID_PREFIX = "change-me"
DOCUMENTATION_CLIENT_ID = "2dbh26tahjj26sg"
# Zone abbreviations people write for Russian time zones (the tz database has none of them). Only
# unambiguous ones: "IST" or "CST" mean different zones in different countries.
_ZONE_ALIASES = {
    "MSK": "Europe/Moscow", "SAMT": "Europe/Samara", "YEKT": "Asia/Yekaterinburg", "OMST": "Asia/Omsk",
    "NOVT": "Asia/Novosibirsk", "KRAT": "Asia/Krasnoyarsk", "IRKT": "Asia/Irkutsk", "YAKT": "Asia/Yakutsk",
    "VLAT": "Asia/Vladivostok", "MAGT": "Asia/Magadan", "PETT": "Asia/Kamchatka",
}


def api_key_env_name(account_name: str) -> str:
    return "FS_CRM_ACCOUNT_%s_API_KEY" % re.sub(r"[^A-Z0-9]", "_", account_name.upper())


def client_id_env_name(account_name: str) -> str:
    return "FS_CRM_ACCOUNT_%s_CLIENT_ID" % re.sub(r"[^A-Z0-9]", "_", account_name.upper())


class ConfigError(Exception):
    """The configuration cannot be used; the message names file, section and key."""

    def __init__(self, path: str, section: str, key: str | None, problem: str):
        where = "[%s]" % section if section else "top level"
        if key:
            where += " key %r" % key
        super().__init__("%s: %s: %s" % (path, where, problem))
        self.path, self.section, self.key = path, section, key


@dataclass(frozen=True)
class FreeswitchConfig:
    host: str = "127.0.0.1"
    port: int = 8021
    password: str = field(default="ClueCon", repr=False)
    # Every command we send waits at most this long for its reply; a silent FreeSWITCH must
    # never freeze the listener.
    command_timeout: float = 5.0
    connect_timeout: float = 5.0
    reconnect_min_delay: float = 0.5
    reconnect_max_delay: float = 30.0


@dataclass(frozen=True)
class HttpConfig:
    listen_host: str = "127.0.0.1"
    listen_port: int = 8090
    public_url: str = "http://127.0.0.1:8090"


@dataclass(frozen=True)
class StateConfig:
    dir: Path = Path("/var/lib/fs-crm")
    # Calls in progress tracked at most: a flood of calls that never end (or lost hangup events)
    # must not grow memory without bound. Beyond it the longest-silent calls are finished as
    # orphans, with a warning, and reported with what is known of them.
    max_calls_in_progress: int = 50_000


@dataclass(frozen=True)
class DeliveryConfig:
    # A call card older than this helps nobody: it is dropped with a log line instead of sent.
    card_max_age: float = 30.0
    connect_timeout: float = 3.05
    event_read_timeout: float = 5.0
    upload_read_timeout: float = 20.0
    # retailCRM's documented budgets: about 40 requests/s on /telephony routes, 10/s elsewhere.
    telephony_rps: float = 40.0
    general_rps: float = 10.0
    retry_min_delay: float = 1.0
    retry_max_delay: float = 60.0


@dataclass(frozen=True)
class StorageConfig:
    # None: no storage configured; recordings are ignored and no call waits for one.
    backend: str | None = None  # "s3" | "local"
    bucket: str | None = None
    region: str | None = None
    endpoint_url: str | None = None  # S3-compatible stores (MinIO, Ceph, Yandex Object Storage...)
    prefix: str = ""
    directory: Path | None = None  # backend "local"
    # Signs recording URLs; generated once into the state dir when not given. Playback servers
    # run on their own (horizontal scaling) need the same value.
    url_secret: str | None = field(default=None, repr=False)
    # How long a call's history waits for its recording to be stored before going without it.
    max_wait: float = 600.0
    # Remove FreeSWITCH's file once the store has confirmed the object.
    delete_local: bool = True


# retailCRM's source object (PHP client Model/Entity/Source): what calls[][source] may hold.
SOURCE_FIELDS = ("source", "medium", "campaign", "keyword", "content")
# Placeholders a missed-call task's text may use.
TASK_TEXT_FIELDS = ("phone", "date", "external_phone", "site")


@dataclass(frozen=True)
class MissedCallTasks:
    """An account's missed incoming calls become CRM tasks (`[accounts.missed_call_tasks]`)."""

    text: str = "Missed call from {phone}: call back"
    # CRM user id for a missed call with no responsible manager and no single manager it rang
    # (a ring group nobody answered); None: no task for such calls.
    performer: int | None = None
    # The task is due this many minutes after the call; 0: no due time.
    due_in_minutes: int = 0


@dataclass(frozen=True)
class AccountConfig:
    name: str
    crm_url: str
    api_key: str = field(repr=False)
    client_id: str = field(repr=False)
    code: str
    domain: str
    timezone: str
    # (CRM user id, extension) pairs, in file order.
    extensions: tuple[tuple[int, str], ...] = ()
    # (store code, company number) pairs, in file order.
    external_phones: tuple[tuple[str, str], ...] = ()
    # ISO 3166 alpha-2 region of numbers written without a country code ("89121234567" in RU).
    country: str = "RU"
    # --- CRM to PBX ---
    # The account's dialplan context: click-to-call dials the customer there when no outbound
    # route is given (as if the manager had dialled the number), and routing falls back there.
    context: str = "default"
    # Click-to-call: a dial string with {number} (e.g. "sofia/gateway/carrier/{number}") to reach the
    # customer directly, instead of the dialplan. Values are checked against a whitelist.
    outbound_route: str | None = None
    # Seconds the manager's phone rings on click-to-call before giving up.
    answer_timeout: int = 30
    # Routing: dialplan destination (ring group, queue or extension) in `context` for incoming calls
    # whose responsible manager is unknown, away, unregistered, or when the CRM is slow or failing.
    fallback: str | None = None
    # Routing: ring the responsible manager whenever his phone is free (registered and on no call),
    # whatever his status in the CRM (the lookup asks with ignoreStatus=1, fs-crm's own record of
    # his status is not consulted either). Off: only a manager the CRM calls free, not away.
    ignore_status: bool = False
    # Where CRM user statuses go on the PBX: "none" (fs-crm's own routing only), "callcenter"
    # (mod_callcenter agent status), "hash" or "db" (a do-not-disturb flag the dialplan can read).
    status_push: str = "none"
    # mod_callcenter agent name for an extension.
    callcenter_agent: str = "{extension}@{domain}"
    # --- optional features, off by default ---
    # Call tracking: (company number as in external_phones, ((source field, value), ...)) pairs;
    # the history of calls on that number carries them as calls[][source].
    external_phone_sources: tuple[tuple[str, tuple[tuple[str, str], ...]], ...] = ()
    # Status changes made on the PBX (conf/freeswitch/dnd.xml's feature codes, mod_callcenter agent
    # status with status_push = "callcenter") become the CRM user's status.
    status_from_pbx: bool = False
    # None: missed calls make no tasks.
    missed_call_tasks: MissedCallTasks | None = None

    def source_of(self, external_phone: str | None) -> dict[str, str] | None:
        """The call-tracking source of a company number as external_phones writes it, if any."""
        for number, fields in self.external_phone_sources:
            if number == external_phone:
                return dict(fields)
        return None

    @property
    def default_external_phone(self) -> str | None:
        return self.external_phones[0][1] if self.external_phones else None

    def extension_of(self, user_id: int) -> str | None:
        for uid, ext in self.extensions:
            if uid == user_id:
                return ext
        return None

    @property
    def zone(self) -> zoneinfo.ZoneInfo:
        return zoneinfo.ZoneInfo(self.timezone)

    def user_id_of(self, extension: str) -> int | None:
        for user_id, ext in self.extensions:
            if ext == extension:
                return user_id
        return None

    def has_extension(self, extension: str) -> bool:
        return any(ext == extension for _, ext in self.extensions)

    def canonical_phone(self, number: str | None) -> str:
        """The number as fs-crm sends it to the CRM: E.164 digits without + (fs_crm.phones)."""
        return canonical_phone(number, self.country)

    def site_of(self, number: str) -> tuple[str, str] | None:
        """(store code, configured number) for a company number written in any common form."""
        wanted = digits_of(number)
        if not wanted:
            return None
        canonical = self.canonical_phone(number)
        for site, configured, have, have_canonical in self._company_numbers:
            if (have == wanted or (len(have) >= 10 and len(wanted) >= 10 and have[-10:] == wanted[-10:])
                    or have_canonical == canonical):
                return site, configured
        return None

    @functools.cached_property
    def _company_numbers(self) -> tuple[tuple[str, str, str, str], ...]:
        # site_of runs for every call card: the configured numbers are taken apart once.
        return tuple((site, configured, digits_of(configured), self.canonical_phone(configured))
                     for site, configured in self.external_phones)


@dataclass(frozen=True)
class RoutingConfig:
    # The outbound-socket app FreeSWITCH connects to (`socket 127.0.0.1:8084 async full`).
    listen_host: str = "127.0.0.1"
    listen_port: int = 8084
    enabled: bool = True
    # Hard deadline for asking the CRM who the caller's responsible manager is.
    manager_timeout: float = 1.5


@dataclass(frozen=True)
class CdrConfig:
    """`POST /cdr` from mod_json_cdr (conf/freeswitch/json_cdr.conf.xml): on only with a password."""

    user: str = "freeswitch"
    password: str | None = field(default=None, repr=False)
    # Addresses the posts may come from; default: [freeswitch] host.
    allow: tuple[str, ...] = ()
    # mod_json_cdr's err-log-dir, when FreeSWITCH runs on this host: what it spooled while fs-crm
    # was away is taken from there (and the files removed) without a manual `fs-crm backfill`.
    spool_dir: Path | None = None

    @property
    def enabled(self) -> bool:
        return bool(self.password)


@dataclass(frozen=True)
class HealthConfig:
    # /healthz answers 503 once the oldest call waiting for the CRM has waited this long (seconds).
    max_pending_age: float = 600.0


@dataclass(frozen=True)
class Config:
    path: str
    freeswitch: FreeswitchConfig
    http: HttpConfig
    state: StateConfig
    delivery: DeliveryConfig
    accounts: tuple[AccountConfig, ...]
    log_level: str = "INFO"
    log_format: str = "text"  # "text" | "json": one record per line either way
    storage: StorageConfig = StorageConfig()
    routing: RoutingConfig = RoutingConfig()
    health: HealthConfig = HealthConfig()
    cdr: CdrConfig = CdrConfig()

    def account(self, name: str) -> AccountConfig:
        for acc in self.accounts:
            if acc.name == name:
                return acc
        raise KeyError(name)


_SECTIONS = {"freeswitch", "http", "state", "delivery", "accounts", "logging", "storage", "routing", "health", "cdr"}


class _Reader:
    """Typed access to one TOML table that remembers where it is for error messages."""

    def __init__(self, path: str, section: str, table: Any):
        if not isinstance(table, dict):
            raise ConfigError(path, section, None, "must be a table")
        self.path, self.section, self.table = path, section, table
        self.used: set[str] = set()

    def error(self, key: str | None, problem: str) -> ConfigError:
        return ConfigError(self.path, self.section, key, problem)

    def _get(self, key: str, default: Any, kinds: tuple[type, ...], kind_name: str) -> Any:
        self.used.add(key)
        if key not in self.table:
            if default is _REQUIRED:
                raise self.error(key, "is required")
            return default
        value = self.table[key]
        if isinstance(value, bool) and bool not in kinds:
            raise self.error(key, "must be %s, got %r" % (kind_name, value))
        if not isinstance(value, kinds):
            raise self.error(key, "must be %s, got %r" % (kind_name, value))
        return value

    def bool(self, key: str, default: Any) -> bool:
        return self._get(key, default, (bool,), "true or false")

    def str(self, key: str, default: Any = None, *, non_empty: bool = True) -> str:
        value = self._get(key, default, (str,), "a string")
        if non_empty and isinstance(value, str) and not value.strip():
            raise self.error(key, "must not be empty")
        return value

    def number(self, key: str, default: Any, *, minimum: float = 0.0, integer: bool = False) -> Any:
        value = self._get(key, default, (int,) if integer else (int, float), "an integer" if integer else "a number")
        if value < minimum:
            raise self.error(key, "must be at least %s, got %r" % (minimum, value))
        return value

    def check_unknown(self) -> None:
        unknown = sorted(set(self.table) - self.used)
        if unknown:
            raise self.error(unknown[0], "unknown key (known: %s)" % ", ".join(sorted(self.used)))


_REQUIRED = object()
# Values that end up inside FreeSWITCH commands are whitelisted here, at load time.
_SAFE_WORD = re.compile(r"[A-Za-z0-9_.-]{1,64}")
# "+" too: {number} has no + (E.164 digits), so a carrier wanting one gets ".../+{number}".
_ROUTE = re.compile(r"[A-Za-z0-9_./@:+-]*\{number\}[A-Za-z0-9_./@:+-]*")


def _parse_listen(reader: _Reader, value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise reader.error("listen", "must be HOST:PORT, got %r" % value)
    return host.strip("[]"), int(port)


def _parse_url(reader: _Reader, key: str, value: str) -> str:
    if not re.match(r"^https?://[^/\s]+", value):
        raise reader.error(key, "must be an http:// or https:// URL, got %r" % value)
    return value.rstrip("/")


def _parse_crm_url(reader: _Reader, value: str) -> str:
    """The account's address: scheme and host (and port) only, since fs-crm appends /api/... itself;
    "https://shop.retailcrm.ru/api/v5" would make every request go to /api/v5/api/v5/..."""
    url = _parse_url(reader, "crm_url", value)
    parts = urllib.parse.urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    if parts.path or parts.query or parts.fragment or host != parts.netloc:
        # A user:password@ part is not echoed back: it is a secret.
        got = "" if host != parts.netloc else ", got %r" % value
        base = json.dumps("%s://%s" % (parts.scheme, host))
        raise reader.error("crm_url", "must be only the scheme and host of the account's retailCRM (fs-crm adds "
                                      "/api/... itself): write %s%s" % (base, got))
    return url


_OFFSET = re.compile(r"(?:UTC|GMT)\s*([+-])\s*(\d{1,2})(?::?00)?", re.IGNORECASE)


def _offset_zone(match: re.Match[str]) -> str | None:
    """The tz database's name of a fixed offset written "UTC+3" or "GMT-5", if it has one."""
    hours = int(match.group(2))
    # Etc/GMT zones have POSIX signs: UTC+3 is Etc/GMT-3.
    zone = "Etc/GMT%s%d" % ("-" if match.group(1) == "+" else "+", hours) if hours else "UTC"
    return zone if zone in zoneinfo.available_timezones() else None


def zone_suggestions(name: str) -> list[str]:
    """IANA zone names an operator probably meant by a name zoneinfo does not know: "Moscow" and
    "MSK" -> Europe/Moscow, "europe/moscow" -> Europe/Moscow, "UTC+3" -> Etc/GMT-3."""
    text = name.strip()
    if text.upper() in _ZONE_ALIASES:
        return [_ZONE_ALIASES[text.upper()]]
    offset = _OFFSET.fullmatch(text)
    if offset:
        # Never a near miss: "Etc/GMT-13" for "GMT-13" would be the opposite offset.
        zone = _offset_zone(offset)
        return [zone] if zone else []
    zones = zoneinfo.available_timezones()
    wanted = re.sub(r"\s+", "_", text).lower()
    by_lower = {zone.lower(): zone for zone in zones}
    if wanted in by_lower:
        return [by_lower[wanted]]
    city = wanted.rsplit("/", 1)[-1]
    found = sorted(zone for zone in zones if "/" in zone and zone.rsplit("/", 1)[-1].lower() == city)
    if found:
        return found
    return [by_lower[close] for close in difflib.get_close_matches(wanted, list(by_lower), n=3, cutoff=0.85)]


def _timezone_problem(name: str) -> str:
    suggestions = zone_suggestions(name)
    if suggestions and suggestions[0].startswith("Etc/GMT") and _OFFSET.fullmatch(name.strip()):
        return ("unknown time zone %r: write %s (the tz database's sign is the other way round), or better a city's "
                "zone, e.g. \"Europe/Moscow\", which follows the local time's changes" % (name, json.dumps(suggestions[0])))
    if len(suggestions) == 1:
        return "unknown time zone %r: write %s (an IANA zone name, Area/City)" % (name, json.dumps(suggestions[0]))
    if suggestions:
        return "unknown time zone %r: write one of %s" % (name, ", ".join(json.dumps(s) for s in suggestions))
    return "unknown time zone %r: give an IANA zone name (Area/City), e.g. \"Europe/Moscow\"" % name


# A CRM user id as retailCRM numbers users: 1, 2, ... (no sign, no leading zero).
_USER_ID = re.compile(r"[1-9][0-9]{0,9}")
_EXTENSION = re.compile(r"[0-9A-Za-z_.-]{1,32}")


def looks_reversed(extensions: tuple[tuple[int, str], ...]) -> bool:
    """True when every pair reads better the other way round ("100" = "1": an extension as the key,
    a user id as the value). Only a hint: a CRM with user ids above 100 and two-digit extensions
    looks the same, so `fs-crm check --offline` warns and `fs-crm check` asks the CRM."""
    return bool(extensions) and all(
        _USER_ID.fullmatch(ext) and len(ext) < len(str(uid)) for uid, ext in extensions)


def _load_extensions(r: _Reader) -> tuple[tuple[int, str], ...]:
    r.used.add("extensions")
    how = ("add the managers as a table [accounts.extensions] of \"CRM user id\" = \"extension\", "
           "e.g. \"1\" = \"100\" (a user's id is the number in the address of his page in the CRM)")
    if "extensions" not in r.table:
        raise r.error("extensions", "is missing: without it no call card reaches a manager and no call in the "
                                    "CRM history has one; %s" % how)
    ext_table = r.table["extensions"]
    if not isinstance(ext_table, dict):
        raise r.error("extensions", "must be a table of \"CRM user id\" = \"extension\"")
    if not ext_table:
        raise r.error("extensions", "is empty: without it no call card reaches a manager and no call in the "
                                    "CRM history has one; %s" % how)
    extensions: list[tuple[int, str]] = []
    seen_ext: set[str] = set()
    for user_id, ext in ext_table.items():
        key = "extensions.%s" % user_id
        if isinstance(ext, int) and not isinstance(ext, bool):
            ext = str(ext)
        if not _USER_ID.fullmatch(user_id):
            problem = "CRM user id must be a positive integer (no leading zero), got %r" % user_id
            if isinstance(ext, str) and _USER_ID.fullmatch(ext) and _EXTENSION.fullmatch(user_id):
                # "100" = "1": the pair written extension -> user id.
                problem += ("; the map is \"CRM user id\" = \"extension\": if %r is the extension, swap the pair: "
                            "\"%s\" = \"%s\"" % (user_id, ext, user_id))
            raise r.error(key, problem)
        if not isinstance(ext, str) or not _EXTENSION.fullmatch(ext):
            raise r.error(key, "extension must be a short string of digits or letters, got %r" % (ext,))
        if ext in seen_ext:
            raise r.error(key, "extension %r is given to two users" % ext)
        seen_ext.add(ext)
        extensions.append((int(user_id), ext))
    return tuple(extensions)


def _load_external_phones(r: _Reader, country: str) -> tuple[tuple[str, str], ...]:
    r.used.add("external_phones")
    phone_table = r.table.get("external_phones", {})
    if not isinstance(phone_table, dict):
        raise r.error("external_phones", "must be a table of store code = \"company number\"")
    external_phones: list[tuple[str, str]] = []
    stores: dict[str, str] = {}  # canonical number -> store code
    for site, number in phone_table.items():
        key = "external_phones.%s" % site
        cleaned = clean_phone(number) if isinstance(number, str) else ""
        if not re.fullmatch(r"\+?[0-9]{3,20}", cleaned):
            raise r.error(key, "must be a phone number of 3-20 digits with an optional leading +, got %r" % (number,))
        canonical = canonical_phone(cleaned, country)
        if canonical in stores:
            raise r.error(key, "company number %r is store %s's too: a call on it would always go to %s; give each "
                               "number to one store" % (number, stores[canonical], stores[canonical]))
        stores[canonical] = site
        external_phones.append((site, cleaned))
    return tuple(external_phones)


def _load_account(path: str, index: int, table: Any, env: Mapping[str, str]) -> AccountConfig:
    r = _Reader(path, "accounts[%d]" % index, table)
    name = r.str("name", _REQUIRED)
    if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", name):
        raise r.error("name", "must be 1-64 letters, digits, '_' or '-' (it names files and env variables), got %r"
                      % name)
    r.section = "accounts %r" % name
    crm_url = _parse_crm_url(r, r.str("crm_url", _REQUIRED))
    env_key = api_key_env_name(name)
    from_env = env.get(env_key)
    api_key = from_env or r.str("api_key", None)
    r.used.add("api_key")
    if not api_key:
        raise r.error("api_key", "is required (or set %s)" % env_key)
    if api_key.strip().lower().startswith(EXAMPLE_API_KEY_PREFIX):
        raise r.error("api_key", "%s the example's placeholder %r: replace the example's API key with the account's "
                                 "own (an API key of its retailCRM with the telephony_read and telephony_write "
                                 "scopes), best given in the environment variable %s rather than in this file"
                      % ("%s holds" % env_key if from_env else "is", api_key, env_key))
    client_env = client_id_env_name(name)
    client_id = env.get(client_env) or r.str("client_id", None)
    r.used.add("client_id")
    if not client_id:
        raise r.error("client_id", "is required (or set %s)" % client_env)
    if client_id.strip().lower().startswith(EXAMPLE_CLIENT_ID_PREFIX) or client_id == DOCUMENTATION_CLIENT_ID:
        # The clientId is what authenticates the CRM's callbacks and recording fetches: a published
        # value would let anyone place calls through the PBX and play recordings.
        raise r.error("client_id", "is the example's %r: choose a long random secret of your own, e.g. the output of "
                                   "python3 -c \"import secrets; print(secrets.token_urlsafe(24))\", then register "
                                   "the module again (fs-crm register)" % client_id)
    code = r.str("code", "fs-crm")
    if not re.fullmatch(r"[A-Za-z0-9_-]+", code):
        raise r.error("code", "may hold only letters, digits, '_' and '-', got %r" % code)
    domain = r.str("domain", _REQUIRED)
    timezone = r.str("timezone", "UTC")
    try:
        zoneinfo.ZoneInfo(timezone)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise r.error("timezone", _timezone_problem(timezone)) from None
    country = r.str("country", "RU").strip().upper()
    if not is_country(country):
        raise r.error("country", "must be an ISO 3166 two-letter country code with a numbering plan (e.g. \"RU\", "
                      "\"KZ\", \"DE\"), got %r" % r.table["country"])

    extensions = _load_extensions(r)
    external_phones = _load_external_phones(r, country)
    context = r.str("context", "default")
    if not _SAFE_WORD.fullmatch(context):
        raise r.error("context", "may hold only letters, digits, '_', '-' and '.', got %r" % context)
    if not _SAFE_WORD.fullmatch(domain):
        raise r.error("domain", "may hold only letters, digits, '_', '-' and '.', got %r" % domain)
    outbound_route = r.str("outbound_route", None)
    if outbound_route is not None and not _ROUTE.fullmatch(outbound_route):
        raise r.error("outbound_route", "must be a dial string holding {number} once and only letters, digits and "
                      "/ @ . : _ - + otherwise (e.g. \"sofia/gateway/carrier/{number}\"), got %r" % outbound_route)
    fallback = r.str("fallback", None)
    if fallback is not None and not _SAFE_WORD.fullmatch(fallback):
        raise r.error("fallback", "must be a dialplan destination (letters, digits, '_', '-', '.'), got %r" % fallback)
    ignore_status = r.bool("ignore_status", False)
    status_push = r.str("status_push", "none")
    if status_push not in ("none", "callcenter", "hash", "db"):
        raise r.error("status_push", "must be one of none, callcenter, hash, db, got %r" % status_push)
    agent = r.str("callcenter_agent", "{extension}@{domain}")
    if not re.fullmatch(r"[A-Za-z0-9_.@{}-]+", agent) or "{extension}" not in agent:
        raise r.error("callcenter_agent", "must contain {extension} and only letters, digits, _ . @ -, got %r" % agent)
    answer_timeout = r.number("answer_timeout", 30, minimum=5, integer=True)
    status_from_pbx = r.bool("status_from_pbx", False)
    missed_call_tasks = _load_missed_call_tasks(r)
    account = AccountConfig(
        name=name, crm_url=crm_url, api_key=api_key, client_id=client_id, code=code, domain=domain,
        timezone=timezone, extensions=extensions, external_phones=external_phones,
        country=country, context=context, outbound_route=outbound_route,
        answer_timeout=answer_timeout, fallback=fallback, ignore_status=ignore_status,
        status_push=status_push, callcenter_agent=agent,
        status_from_pbx=status_from_pbx, missed_call_tasks=missed_call_tasks,
    )
    # Sources name company numbers in any spelling, matched like calls match them (site_of).
    sources = _load_sources(r, account)
    r.check_unknown()
    return dataclasses.replace(account, external_phone_sources=sources) if sources else account


def _load_sources(r: _Reader, account: AccountConfig) -> tuple[tuple[str, tuple[tuple[str, str], ...]], ...]:
    r.used.add("external_phone_sources")
    table = r.table.get("external_phone_sources", {})
    if not isinstance(table, dict):
        raise r.error("external_phone_sources", "must be a table of \"company number\" = { source = \"...\", ... }")
    sources: list[tuple[str, tuple[tuple[str, str], ...]]] = []
    for number, fields in table.items():
        key = "external_phone_sources.%s" % number
        match = account.site_of(number)
        if match is None:
            raise r.error(key, "is not a company number of external_phones (%s)"
                          % (", ".join(n for _, n in account.external_phones) or "none configured"))
        if any(configured == match[1] for configured, _ in sources):
            raise r.error(key, "names company number %s a second time" % match[1])
        if not isinstance(fields, dict) or not fields:
            raise r.error(key, "must be a table holding at least one of %s" % ", ".join(SOURCE_FIELDS))
        values: list[tuple[str, str]] = []
        for field_name, value in fields.items():
            if field_name not in SOURCE_FIELDS:
                raise r.error("%s.%s" % (key, field_name), "unknown key (known: %s)" % ", ".join(SOURCE_FIELDS))
            if not isinstance(value, str) or not value.strip():
                raise r.error("%s.%s" % (key, field_name), "must be a non-empty string, got %r" % (value,))
            values.append((field_name, value.strip()))
        sources.append((match[1], tuple(values)))
    return tuple(sources)


def _load_missed_call_tasks(account: _Reader) -> MissedCallTasks | None:
    account.used.add("missed_call_tasks")
    if "missed_call_tasks" not in account.table:
        return None
    r = _Reader(account.path, "%s.missed_call_tasks" % account.section, account.table["missed_call_tasks"])
    d = MissedCallTasks()
    enabled = r.bool("enabled", False)
    text = r.str("text", d.text)
    try:
        names = [name for _, name, _, _ in string.Formatter().parse(text) if name is not None]
    except ValueError as exc:
        raise r.error("text", "is not a valid template (%s); write { and } as {{ and }}" % exc) from None
    unknown = [name for name in names if name not in TASK_TEXT_FIELDS]
    if unknown:
        raise r.error("text", "unknown placeholder {%s} (known: %s)" % (unknown[0], ", ".join(
            "{%s}" % f for f in TASK_TEXT_FIELDS)))
    performer = r.number("performer", None, minimum=1, integer=True) if "performer" in r.table else None
    r.used.add("performer")
    due = r.number("due_in_minutes", d.due_in_minutes, minimum=0, integer=True)
    r.check_unknown()
    return MissedCallTasks(text=text, performer=performer, due_in_minutes=due) if enabled else None


def parse_config(path: str, data: Mapping[str, Any], env: Mapping[str, str] | None = None) -> Config:
    env = os.environ if env is None else env
    unknown = sorted(set(data) - _SECTIONS)
    if unknown:
        raise ConfigError(path, unknown[0], None, "unknown section (known: %s)" % ", ".join(sorted(_SECTIONS)))

    r = _Reader(path, "freeswitch", data.get("freeswitch", {}))
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

    r = _Reader(path, "http", data.get("http", {}))
    d_http = HttpConfig()
    listen = r.str("listen", "%s:%d" % (d_http.listen_host, d_http.listen_port))
    host, port = _parse_listen(r, listen)
    http = HttpConfig(listen_host=host, listen_port=port,
                      public_url=_parse_url(r, "public_url", r.str("public_url", d_http.public_url)))
    r.check_unknown()

    r = _Reader(path, "state", data.get("state", {}))
    state = StateConfig(dir=Path(r.str("dir", str(StateConfig.dir))),
                        max_calls_in_progress=r.number("max_calls_in_progress", StateConfig.max_calls_in_progress,
                                                       minimum=1, integer=True))
    r.check_unknown()

    r = _Reader(path, "delivery", data.get("delivery", {}))
    dd = DeliveryConfig()
    delivery = DeliveryConfig(**{
        f: r.number(f, getattr(dd, f), minimum=0.001) for f in DeliveryConfig.__dataclass_fields__
    })
    r.check_unknown()

    r = _Reader(path, "logging", data.get("logging", {}))
    level = r.str("level", "INFO").upper()
    if level not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
        raise r.error("level", "must be one of DEBUG, INFO, WARNING, ERROR, got %r" % level)
    log_format = r.str("format", "text")
    if log_format not in ("text", "json"):
        raise r.error("format", "must be \"text\" or \"json\", got %r" % log_format)
    r.check_unknown()

    storage = _load_storage(_Reader(path, "storage", data.get("storage", {})), state.dir)

    r = _Reader(path, "routing", data.get("routing", {}))
    d_routing = RoutingConfig()
    host, port = _parse_listen(r, r.str("listen", "%s:%d" % (d_routing.listen_host, d_routing.listen_port)))
    routing = RoutingConfig(listen_host=host, listen_port=port, enabled=r.bool("enabled", True),
                            manager_timeout=r.number("manager_timeout", d_routing.manager_timeout, minimum=0.05))
    r.check_unknown()

    r = _Reader(path, "cdr", data.get("cdr", {}))
    cdr_password = env.get(CDR_PASSWORD_ENV) or r.str("password", None)
    r.used.add("password")
    allow = r._get("allow", [freeswitch.host], (list,), "a list of addresses")
    if not allow or not all(isinstance(a, str) and a.strip() for a in allow):
        raise r.error("allow", "must be a non-empty list of addresses FreeSWITCH posts from, got %r" % (allow,))
    spool = r.str("spool_dir", None)
    cdr = CdrConfig(user=r.str("user", CdrConfig.user), password=cdr_password,
                    allow=tuple(a.strip() for a in allow), spool_dir=Path(spool) if spool else None)
    if ":" in cdr.user:
        raise r.error("user", "must not contain ':' (mod_json_cdr's cred is user:password)")
    r.check_unknown()

    r = _Reader(path, "health", data.get("health", {}))
    health = HealthConfig(max_pending_age=r.number("max_pending_age", HealthConfig.max_pending_age, minimum=1))
    r.check_unknown()

    raw_accounts = data.get("accounts")
    if not raw_accounts:
        raise ConfigError(path, "accounts", None, "at least one [[accounts]] table is required")
    if not isinstance(raw_accounts, list):
        raise ConfigError(path, "accounts", None, "must be written as [[accounts]] tables")
    accounts = tuple(_load_account(path, i, t, env) for i, t in enumerate(raw_accounts))
    names = [a.name for a in accounts]
    for a in accounts:
        if names.count(a.name) > 1:
            raise ConfigError(path, "accounts %r" % a.name, "name", "two accounts share this name")
    client_ids = [a.client_id for a in accounts]
    for a in accounts:
        if client_ids.count(a.client_id) > 1:
            raise ConfigError(path, "accounts %r" % a.name, "client_id", "two accounts share one client_id")
    if len(accounts) > 1:
        domains = [a.domain for a in accounts]
        for a in accounts:
            if domains.count(a.domain) > 1:
                raise ConfigError(path, "accounts %r" % a.name, "domain",
                                  "two accounts share domain %r; calls could not be told apart" % a.domain)
        _check_company_numbers(path, accounts)
    return Config(path=path, freeswitch=freeswitch, http=http, state=state, delivery=delivery,
                  accounts=accounts, log_level=level, storage=storage, routing=routing, health=health,
                  log_format=log_format, cdr=cdr)


def _check_company_numbers(path: str, accounts: tuple[AccountConfig, ...]) -> None:
    """A company number belongs to one account: it is how an incoming call finds its account and store.
    Numbers are compared as the CRM gets them ("+7 (499) 999-99-99" and "74999999999" are one)."""
    owners: dict[str, tuple[str, str, str]] = {}  # canonical number -> (account, store, as written)
    for account in accounts:
        for site, number in account.external_phones:
            canonical = account.canonical_phone(number)
            owner = owners.setdefault(canonical, (account.name, site, number))
            if owner[0] != account.name:
                raise ConfigError(path, "accounts %r" % account.name, "external_phones.%s" % site,
                                  "company number %s is in two accounts: %r (store %s, as %s) and %r (store %s); "
                                  "a call on it could not be told apart: keep it in one account only"
                                  % (number, owner[0], owner[1], owner[2], account.name, site))


def _load_storage(r: _Reader, state_dir: Path) -> StorageConfig:
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
        endpoint_url = _parse_url(r, "endpoint_url", endpoint_url)
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

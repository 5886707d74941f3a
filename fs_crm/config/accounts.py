"""The [[accounts]] tables: one retailCRM account each (its secrets, CRM address, PBX side and optional
features), and what must hold across accounts."""

from __future__ import annotations

import dataclasses
import json
import re
import string
import urllib.parse
import zoneinfo
from typing import Any, Mapping

from fs_crm.config.model import TASK_TEXT_FIELDS, AccountConfig, MissedCallTasks
from fs_crm.config.numbers import load_extensions, load_external_phones, load_sources
from fs_crm.config.reader import REQUIRED, ConfigError, TableReader, parse_url
from fs_crm.config.timezones import timezone_problem
from fs_crm.phones import is_country

# conf/fs-crm.example.toml's api_key is a reminder ("put-the-key-in-FS_CRM_ACCOUNT_SHOP_API_KEY"), never a
# key: the CRM would refuse it, so it is refused here, before anything starts.
EXAMPLE_API_KEY_PREFIX = "put-the-key-in-"
# conf/fs-crm.example.toml's clientId, and the one retailCRM's own documentation shows.
EXAMPLE_CLIENT_ID_PREFIX = "change-me"
DOCUMENTATION_CLIENT_ID = "2dbh26tahjj26sg"

# Values that end up inside FreeSWITCH commands are whitelisted here, at load time.
_SAFE_WORD = re.compile(r"[A-Za-z0-9_.-]{1,64}")
# "+" too: {number} has no + (E.164 digits), so a carrier wanting one gets ".../+{number}".
_ROUTE = re.compile(r"[A-Za-z0-9_./@:+-]*\{number\}[A-Za-z0-9_./@:+-]*")


def api_key_env_name(account_name: str) -> str:
    return "FS_CRM_ACCOUNT_%s_API_KEY" % re.sub(r"[^A-Z0-9]", "_", account_name.upper())


def client_id_env_name(account_name: str) -> str:
    return "FS_CRM_ACCOUNT_%s_CLIENT_ID" % re.sub(r"[^A-Z0-9]", "_", account_name.upper())


def _parse_crm_url(reader: TableReader, value: str) -> str:
    """The account's address: scheme and host (and port) only, since fs-crm appends /api/... itself;
    "https://shop.retailcrm.ru/api/v5" would make every request go to /api/v5/api/v5/..."""
    url = parse_url(reader, "crm_url", value)
    parts = urllib.parse.urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    if parts.path or parts.query or parts.fragment or host != parts.netloc:
        # A user:password@ part is not echoed back: it is a secret.
        got = "" if host != parts.netloc else ", got %r" % value
        base = json.dumps("%s://%s" % (parts.scheme, host))
        raise reader.error("crm_url", "must be only the scheme and host of the account's retailCRM (fs-crm adds "
                                      "/api/... itself): write %s%s" % (base, got))
    return url


def _load_account(path: str, index: int, table: Any, env: Mapping[str, str]) -> AccountConfig:
    r = TableReader(path, "accounts[%d]" % index, table)
    name = r.str("name", REQUIRED)
    if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", name):
        raise r.error("name", "must be 1-64 letters, digits, '_' or '-' (it names files and env variables), got %r"
                      % name)
    r.section = "accounts %r" % name
    crm_url = _parse_crm_url(r, r.str("crm_url", REQUIRED))
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
    domain = r.str("domain", REQUIRED)
    timezone = r.str("timezone", "UTC")
    try:
        zoneinfo.ZoneInfo(timezone)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise r.error("timezone", timezone_problem(timezone)) from None
    country = r.str("country", "RU").strip().upper()
    if not is_country(country):
        raise r.error("country", "must be an ISO 3166 two-letter country code with a numbering plan (e.g. \"RU\", "
                      "\"KZ\", \"DE\"), got %r" % r.table["country"])

    extensions = load_extensions(r)
    external_phones = load_external_phones(r, country)
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
    sources = load_sources(r, account)
    r.check_unknown()
    return dataclasses.replace(account, external_phone_sources=sources) if sources else account


def _load_missed_call_tasks(account: TableReader) -> MissedCallTasks | None:
    account.used.add("missed_call_tasks")
    if "missed_call_tasks" not in account.table:
        return None
    r = TableReader(account.path, "%s.missed_call_tasks" % account.section, account.table["missed_call_tasks"])
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


def load_accounts(path: str, raw_accounts: Any, env: Mapping[str, str]) -> tuple[AccountConfig, ...]:
    """Every [[accounts]] table, then what must hold across them: a name, a client_id, a domain and a company
    number each belong to one account."""
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
    return accounts


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

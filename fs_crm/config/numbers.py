"""An account's numbers: its map of CRM users to extensions, its company numbers by store, and the
call-tracking sources of those company numbers."""

from __future__ import annotations

import re

from fs_crm.config.model import SOURCE_FIELDS, AccountConfig
from fs_crm.config.reader import TableReader
from fs_crm.phones import canonical_phone, clean_phone

# A CRM user id as retailCRM numbers users: 1, 2, ... (no sign, no leading zero).
_USER_ID = re.compile(r"[1-9][0-9]{0,9}")
_EXTENSION = re.compile(r"[0-9A-Za-z_.-]{1,32}")


def looks_reversed(extensions: tuple[tuple[int, str], ...]) -> bool:
    """True when every pair reads better the other way round ("100" = "1": an extension as the key,
    a user id as the value). Only a hint: a CRM with user ids above 100 and two-digit extensions
    looks the same, so `fs-crm check --offline` warns and `fs-crm check` asks the CRM."""
    return bool(extensions) and all(
        _USER_ID.fullmatch(ext) and len(ext) < len(str(uid)) for uid, ext in extensions)


def load_extensions(r: TableReader) -> tuple[tuple[int, str], ...]:
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


def load_external_phones(r: TableReader, country: str) -> tuple[tuple[str, str], ...]:
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


def load_sources(r: TableReader, account: AccountConfig) -> tuple[tuple[str, tuple[tuple[str, str], ...]], ...]:
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

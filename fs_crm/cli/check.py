"""`fs-crm check`: the offline checks (fs_crm.preflight), then FreeSWITCH, the recording storage and
each account's API key and extension map, one line each."""

import argparse
from typing import TYPE_CHECKING

from fs_crm.cli.startup import configure

if TYPE_CHECKING:
    from fs_crm.config import AccountConfig
    from fs_crm.crm.client import CrmClient

REQUIRED_SCOPES = ("telephony_read", "telephony_write")
# Needed by later features (module registration, user status); missing ones are warned about.
WANTED_SCOPES = ("integration_read", "integration_write", "user_read")


def cmd_check(args: argparse.Namespace) -> int:
    """Online: offline checks, then FreeSWITCH, the storage and each account's key. --offline: the
    config, state dir, outbox, ports and local storage only (fs_crm.preflight), no network."""
    from fs_crm.crm.client import CrmClient
    from fs_crm.freeswitch.eslsession import EslError
    from fs_crm.freeswitch.listener import EslConnection
    from fs_crm.preflight import offline_checks

    config = configure(args)
    print("config %s: OK (%d account(s))" % (config.path, len(config.accounts)))
    checks = offline_checks(config, storage=args.offline)
    for check in checks:
        print(check.line())
    ok = not any(check.failed for check in checks)
    if args.offline:
        return 0 if ok else 1
    fs = config.freeswitch
    conn = EslConnection(fs, lambda event: None)
    try:
        conn.connect()
        version = conn.api("version").strip()
        print("FreeSWITCH %s:%s: OK, authenticated (%s)" % (fs.host, fs.port, version or "version unknown"))
    except EslError as exc:
        ok = False
        print("FreeSWITCH %s:%s: FAILED: %s" % (fs.host, fs.port, exc))
    finally:
        conn.stop()
    if config.storage.backend:
        from fs_crm.service import build_store
        from recordings.base import StorageError

        where = config.storage.bucket or config.storage.directory
        try:
            build_store(config).check()
            print("recording storage (%s %s): OK" % (config.storage.backend, where))
        except StorageError as exc:
            ok = False
            print("recording storage (%s %s): FAILED: %s" % (config.storage.backend, where, exc))
    for account in config.accounts:
        client = CrmClient(account, config.delivery)
        try:
            ok = _check_account(account, client) and ok
        finally:
            client.close()
    return 0 if ok else 1


def _check_account(account: "AccountConfig", client: "CrmClient") -> bool:
    """One account's lines of `fs-crm check`: its key and scopes, then its extension map against the
    CRM's users. False if either failed."""
    from fs_crm.crm.client import CrmError
    from fs_crm.crm.extension_map import compare

    where = "account %s (%s)" % (account.name, account.crm_url)
    try:
        creds = client.credentials()
    except CrmError as exc:
        print("%s: FAILED: %s" % (where, exc))
        return False
    granted = set(creds.scopes)
    legacy = " ".join(creds.credentials)
    missing = [s for s in REQUIRED_SCOPES if s not in granted]
    if missing and "/telephony/" in legacy and not creds.scopes:
        missing = []  # an old key described by method paths instead of scopes
    if missing:
        print("%s: FAILED: the API key lacks scopes %s" % (where, ", ".join(missing)))
        return False
    sites = [site for site, _ in account.external_phones]
    blind = [s for s in sites if creds.site_access == "access_selective" and s not in creds.sites_available]
    wanted = [s for s in WANTED_SCOPES if s not in granted and creds.scopes]
    print("%s: OK, key valid with telephony scopes%s%s" % (
        where,
        "; WARNING: no access to stores %s" % ", ".join(blind) if blind else "",
        "; note: scopes %s missing (needed for module registration and statuses)" % ", ".join(wanted)
        if wanted else ""))
    what = "%s [accounts.extensions]" % where
    if "user_read" not in granted if creds.scopes else "/users" not in legacy:
        print("%s: SKIPPED: the API key lacks user_read, so the map cannot be compared with the CRM's users"
              % what)
        return True
    try:
        users = client.users()
    except CrmError as exc:
        print("%s: FAILED: cannot read the CRM's users: %s" % (what, exc))
        return False
    report = compare(account.name, account.extensions, users)
    if report.failures:
        print("%s: FAILED: %s" % (what, "; ".join(report.failures + report.warnings)))
        return False
    print("%s: OK, %d extension(s), each a user of the CRM%s" % (
        what, len(account.extensions), "".join("; WARNING: %s" % w for w in report.warnings)))
    return True

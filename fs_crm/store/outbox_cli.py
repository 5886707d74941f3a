"""`fs-crm outbox`: what waits for the CRM, and the calls it refused: list, retry, drop, export.

Runs next to the daemon (SQLite lets both use the file); the daemon notices a retry within a
second (fs_crm.store.offhub.StatsCache) and sends the call rendered from the config it runs with.
"""

from __future__ import annotations

import datetime as dt
import json
import sys
import time

from fs_crm.calls.history_mapping import rendered
from fs_crm.config import Config
from fs_crm.store.outbox import FILE_NAME, Outbox, OutboxError, OutboxItem


def run(config: Config, args) -> int:
    path = config.state.dir / FILE_NAME
    if not path.exists():
        print("no outbox yet at %s (nothing was ever queued)" % path)
        return 0
    try:
        outbox = Outbox(path)
    except OutboxError as exc:
        print("fs-crm outbox: %s" % exc, file=sys.stderr)
        return 1
    try:
        return _act(config, outbox, args)
    except OutboxError as exc:
        print("fs-crm outbox: %s" % exc, file=sys.stderr)
        return 1
    finally:
        outbox.close()


def _act(config: Config, outbox: Outbox, args) -> int:
    if args.retry is not None:
        if not args.retry and not args.all:
            print("fs-crm outbox --retry: name the calls (the ids `fs-crm outbox` lists) or give --all",
                  file=sys.stderr)
            return 2
        count = outbox.retry_failed(args.account, None if args.all else args.retry)
        print("requeued %d call(s) that had been set aside; the running fs-crm sends them within a second, "
              "rendered from its config" % count)
        if args.retry and count < len(args.retry):
            print("(%d of the ids named no call set aside)" % (len(args.retry) - count))
    if args.drop:
        dropped = outbox.drop_failed(args.drop)
        for item in dropped:
            print("dropped %s account %s (%s): it will never reach the CRM" % (item.external_id, item.account,
                                                                                item.last_error))
        if len(dropped) < len(args.drop):
            print("(%d of the ids named no call set aside; only set-aside calls can be dropped)"
                  % (len(args.drop) - len(dropped)))
    if args.export:
        for item in outbox.failed():
            print(json.dumps(_exported(config, item), ensure_ascii=False))
        return 0
    _show(config, outbox)
    return 0


def _show(config: Config, outbox: Outbox) -> None:
    stats = outbox.stats()
    now = time.time()
    print("pending: %d\nheld for recordings: %d\nset aside (failed): %d" % (stats.pending, stats.held, stats.failed))
    for account in sorted(set(stats.pending_by_account) | set(stats.failed_by_account) | set(stats.held_by_account)):
        oldest = stats.oldest_pending_by_account.get(account)
        print("  account %s: %d pending%s, %d held, %d set aside" % (
            account, stats.pending_by_account.get(account, 0),
            " (oldest waiting %s)" % _age(now - oldest) if oldest else "", stats.held_by_account.get(account, 0),
            stats.failed_by_account.get(account, 0)))
    failed = outbox.failed()
    if failed:
        print("set aside (retry: fs-crm outbox --retry ID... | --all; drop: --drop ID...; --export):")
    for item in failed:
        print("  %d  %s  account %s  call at %s  queued %s ago  %d attempt(s): %s" % (
            item.id, item.external_id, item.account, _call_time(config, item), _age(now - item.created_at),
            item.attempts, item.last_error))


def _exported(config: Config, item: OutboxItem) -> dict:
    account = next((a for a in config.accounts if a.name == item.account), None)
    payload = rendered(item.payload, item.facts, account) if account and item.facts else item.payload
    return {"id": item.id, "account": item.account, "externalId": item.external_id, "state": item.state,
            "attempts": item.attempts, "lastError": item.last_error,
            "queuedAt": dt.datetime.fromtimestamp(item.created_at, tz=dt.timezone.utc).isoformat(timespec="seconds"),
            "call": payload}


def _call_time(config: Config, item: OutboxItem) -> str:
    """The call's own time (the payload's date is in the account's zone), with that zone."""
    zone = next((a.timezone for a in config.accounts if a.name == item.account), "?")
    return "%s %s" % (item.payload.get("date", "?"), zone)


def _age(seconds: float) -> str:
    seconds = max(0, int(seconds))
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return "%d %s" % (seconds // size, unit)
    return "%d s" % seconds

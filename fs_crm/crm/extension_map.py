"""An account's extension map ([accounts.extensions], CRM user id -> extension) against the CRM's
users (`GET /api/v5/users`), for `fs-crm check`: pure, no I/O.

The CRM's user object has no extension (PHP Model/Entity/Users/User); what can be checked is that
every key is the id of an active user, and whether the map was written the other way round.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable


@dataclass(frozen=True)
class MapReport:
    failures: tuple[str, ...]  # the map is wrong: fix it before relying on cards and history
    warnings: tuple[str, ...]  # worth fixing, nothing breaks


def _user_id(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.isdigit() and value.isascii():
        return int(value)
    return None


def _name(user: dict) -> str:
    parts = [user.get(k) for k in ("firstName", "lastName")]
    return " ".join(p.strip() for p in parts if isinstance(p, str) and p.strip())


def _pairs(pairs: Iterable[tuple[Any, Any]]) -> str:
    return ", ".join('"%s" = "%s"' % pair for pair in pairs)


def compare(account: str, extensions: tuple[tuple[int, str], ...], users: Iterable[dict]) -> MapReport:
    """What is wrong with `extensions` given the CRM's `users` (dicts with at least id and active)."""
    by_id: dict[int, dict] = {}
    for user in users:
        uid = _user_id(user.get("id"))
        if uid is not None:
            by_id[uid] = user
    where = "[accounts.extensions] of account %s" % account
    unknown = [(uid, ext) for uid, ext in extensions if uid not in by_id]
    # "100" = "1": the key is no user, the value is one.
    swappable = [(uid, ext) for uid, ext in unknown if _user_id(ext) in by_id]
    failures: list[str] = []
    if unknown and len(swappable) == len(unknown) and len(unknown) == len(extensions):
        failures.append('the map looks reversed: the CRM has no users %s, but it has users %s. %s is "CRM user id" = '
                        '"extension": write %s' % (", ".join(str(uid) for uid, _ in unknown),
                                                   ", ".join(ext for _, ext in unknown), where,
                                                   _pairs((ext, uid) for uid, ext in unknown)))
    elif unknown:
        text = "the CRM has no users with ids %s (extensions %s): fix %s, whose keys are CRM user ids" % (
            ", ".join(str(uid) for uid, _ in unknown), ", ".join(ext for _, ext in unknown), where)
        if swappable:
            text += "; reversed pairs? %s would name existing users" % _pairs((ext, uid) for uid, ext in swappable)
        failures.append(text)
    inactive = [(uid, ext) for uid, ext in extensions if uid in by_id and by_id[uid].get("active") is False]
    warnings = []
    if inactive:
        shown = ", ".join("%d (%sextension %s)" % (uid, "%s, " % _name(by_id[uid]) if _name(by_id[uid]) else "", ext)
                          for uid, ext in inactive)
        warnings.append("user(s) %s deactivated in the CRM: remove them from %s or reactivate them" % (shown, where))
    return MapReport(tuple(failures), tuple(warnings))

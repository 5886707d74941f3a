"""Time zone names: what an operator probably meant by a zone the tz database does not know ("MSK", "UTC+3")."""

from __future__ import annotations

import difflib
import json
import re
import zoneinfo

# Zone abbreviations people write for Russian time zones (the tz database has none of them). Only
# unambiguous ones: "IST" or "CST" mean different zones in different countries.
_ZONE_ALIASES = {
    "MSK": "Europe/Moscow", "SAMT": "Europe/Samara", "YEKT": "Asia/Yekaterinburg", "OMST": "Asia/Omsk",
    "NOVT": "Asia/Novosibirsk", "KRAT": "Asia/Krasnoyarsk", "IRKT": "Asia/Irkutsk", "YAKT": "Asia/Yakutsk",
    "VLAT": "Asia/Vladivostok", "MAGT": "Asia/Magadan", "PETT": "Asia/Kamchatka",
}

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


def timezone_problem(name: str) -> str:
    suggestions = zone_suggestions(name)
    if suggestions and suggestions[0].startswith("Etc/GMT") and _OFFSET.fullmatch(name.strip()):
        return ("unknown time zone %r: write %s (the tz database's sign is the other way round), or better a city's "
                "zone, e.g. \"Europe/Moscow\", which follows the local time's changes" % (name, json.dumps(suggestions[0])))
    if len(suggestions) == 1:
        return "unknown time zone %r: write %s (an IANA zone name, Area/City)" % (name, json.dumps(suggestions[0]))
    if suggestions:
        return "unknown time zone %r: write one of %s" % (name, ", ".join(json.dumps(s) for s in suggestions))
    return "unknown time zone %r: give an IANA zone name (Area/City), e.g. \"Europe/Moscow\"" % name

"""Phone number normalisation shared by the mapping, the config and the HTTP callbacks (pure)."""

import re

_SEPARATORS = re.compile(r"[\s()\-.]")
_PHONE = re.compile(r"\+?[0-9]{1,32}")


def digits_of(number: str | None) -> str:
    if not number or number.isdigit():  # most caller ids: nothing to drop
        return number or ""
    return "".join(ch for ch in number if ch.isdigit())


def clean_phone(number: str | None) -> str:
    """A caller id as the CRM should see it: separators dropped, a leading + kept.

    Anything that is not a number after that (anonymous, SIP URIs) comes back unchanged, so the
    CRM shows what the PBX saw rather than nothing.
    """
    raw = (number or "").strip()
    compact = _SEPARATORS.sub("", raw)
    return compact if _PHONE.fullmatch(compact) else raw

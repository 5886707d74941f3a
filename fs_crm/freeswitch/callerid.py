"""Customer names from the CRM as FreeSWITCH caller-ID names (pure).

A name is hostile input that travels through every parser FreeSWITCH has before a phone shows it
(read in FreeSWITCH 1.11's own sources):
- the ESL line itself (`bgapi originate ...`, a sendmsg `execute-app-arg:` header): a line break
  ends it;
- `originate`'s argument line, split on spaces where `'...'` groups and `\\` escapes
  (switch_separate_string, whose cleanup also turns `\\n`, `\\s`, `\\t` into the characters);
- the `{var=value,...}` block of a dial string: `,` separates (or any character after a leading
  `^^`), `}` ends the block, `'` quotes, `\\` escapes, `=` splits (switch_event_create_brackets);
- `&bridge(...)`: the first `)` ends the application's argument;
- application arguments (`set`, `bridge`) are variable-expanded: `${...}` is replaced, and
  `${api(args)}` runs a FreeSWITCH API, `system` included;
- mod_sofia url-decodes a caller-ID name holding `%` (check_decode: `%0D%0A` becomes a line break
  inside the INVITE) and keeps only the text between its first and last `"`, then writes
  `From: "<name>" <sip:...>`.

No escaping is right for all of those at once, so names are whitelisted instead: letters and
combining marks of any script, digits, spaces, `.` and `-` (other dashes become `-`); an apostrophe becomes U+2019 (’) so
"O'Brien" keeps its look without being a quote; line breaks, tabs and other control or separator
characters become spaces; everything else (quotes, commas, braces, brackets, `$ % ^ \\ | ; : @ /
< > = _`, invisible format characters such as right-to-left overrides) is dropped. Spaces are
collapsed and the result is cut to MAX_LENGTH characters (a phone's display shows fewer). What is
left is written between single quotes, which `originate`'s space split needs and the other parsers
strip; it holds no quote, so none can end early. A name with no letter or digit left is no name.
"""

from __future__ import annotations

import unicodedata
from typing import Any

# Characters; the display of a desk phone shows about 20-30, UTF-8 takes up to 4 bytes each.
MAX_LENGTH = 40
_KEPT = frozenset(" .-\u2019")
_APOSTROPHES = frozenset("'\u2018\u2019\u02bc`\u00b4")
TYPOGRAPHIC_APOSTROPHE = "\u2019"


def safe_name(text: object) -> str | None:
    """`text` reduced to what may reach FreeSWITCH (see the module docstring), or None when
    nothing readable is left."""
    if not isinstance(text, str):
        return None
    name = _clean(text[:MAX_LENGTH * 8])
    # Dropping characters can bring a letter and a combining mark together: compose them too.
    name = _clean(name)
    return name if _is_safe(name) else None


def _clean(text: str) -> str:
    out: list[str] = []
    for ch in unicodedata.normalize("NFC", text):
        category = unicodedata.category(ch)
        if ch in _APOSTROPHES:
            out.append(TYPOGRAPHIC_APOSTROPHE)
        elif _allowed(ch):
            out.append(ch)
        elif category in ("Zs", "Zl", "Zp", "Cc"):
            out.append(" ")
        elif category == "Pd":  # dashes of other scripts and typographies: a plain hyphen
            out.append("-")
        # anything else is dropped
    return " ".join("".join(out).split())[:MAX_LENGTH].rstrip()


def _allowed(ch: str) -> bool:
    return ch in _KEPT or unicodedata.category(ch)[0] in "LMN"


def _is_safe(name: str) -> bool:
    """What FreeSWITCH may get: allowed characters only, no space at either end, a letter or digit."""
    return (0 < len(name) <= MAX_LENGTH and name == name.strip() and all(_allowed(ch) for ch in name)
            and any(unicodedata.category(ch)[0] in "LN" for ch in name))


def customer_name(customer: Any) -> str | None:
    """The name a phone should show for the CRM's `customer` (the manager lookup's, details=1):
    first and last name as the CRM holds them, made safe; None when the CRM gave none."""
    if not isinstance(customer, dict):
        return None
    parts = [customer.get(key) for key in ("firstName", "lastName")]
    return safe_name(" ".join(part for part in parts if isinstance(part, str)))


def quoted(name: str) -> str:
    """A safe_name() as the value of a `{var=value}` dial-string variable (of `originate`, whose
    space split needs the quotes, or of `bridge`, whose variable parser strips them)."""
    if not _is_safe(name):
        raise ValueError("not a safe caller-ID name: %r" % name)
    return "'%s'" % name


__all__ = ["MAX_LENGTH", "customer_name", "quoted", "safe_name"]

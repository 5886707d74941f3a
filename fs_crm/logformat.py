"""Log records as one line each: plain text, or JSON with the call, account and phone as fields.

A traceback or a message with a newline in it would otherwise break a record over several lines,
and journald, grep and log shippers then see fragments. Multi-line parts are folded with " | ".
The JSON fields are read from the message, whose wording follows one convention across fs-crm:
"call <uuid> account <name>: ...", "<account>: ..." and "caller <number>".
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_CALL = re.compile(r"\bcall ([0-9A-Fa-f][0-9A-Fa-f-]{7,63})\b")
_ACCOUNT = re.compile(r"\baccount ([A-Za-z0-9_-]{1,64})\b|^([A-Za-z0-9_-]{1,64}): ")
_PHONE = re.compile(r"\b(?:caller|phone|customer) (\+?[0-9*]{3,20})\b")


def one_line(text: str) -> str:
    return " | ".join(part for part in text.splitlines() if part.strip()) if "\n" in text or "\r" in text else text


class OneLineFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        return one_line(super().format(record))


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        out = {
            "time": dt.datetime.fromtimestamp(record.created, tz=dt.timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": one_line(message),
        }
        for field, pattern in (("call", _CALL), ("account", _ACCOUNT), ("phone", _PHONE)):
            match = pattern.search(message)
            if match:
                out[field] = next(group for group in match.groups() if group)
        if record.exc_info:
            out["exception"] = one_line(self.formatException(record.exc_info))
        return json.dumps(out, ensure_ascii=False)


def formatter(kind: str) -> logging.Formatter:
    return JsonFormatter() if kind == "json" else OneLineFormatter()

"""One HTTP exchange with the fake retailCRM: the request as it recorded it, and the answer it gives."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any


class _Headers(dict):
    """Request headers with case-insensitive lookup (stored lower-case)."""

    def __getitem__(self, key: str) -> str:
        return super().__getitem__(key.lower())

    def get(self, key: str, default: Any = None) -> Any:  # type: ignore[override]
        return super().get(key.lower(), default)

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and super().__contains__(key.lower())


@dataclass
class Received:
    method: str
    path: str
    headers: _Headers
    form: dict[str, str]
    query: dict[str, str]
    received_at: float  # time.monotonic()
    status: int | None = None  # None while the answer is still being prepared (e.g. stalling)
    body: bytes = b""


@dataclass
class _Answer:
    status: int
    body: str
    content_type: str = "application/json"


def _json(status: int, payload: dict) -> _Answer:
    return _Answer(status, json.dumps(payload, ensure_ascii=False))


def _error(status: int, msg: str, errors: dict | None = None) -> _Answer:
    payload: dict[str, Any] = {"success": False, "errorMsg": msg}
    if errors:
        payload["errors"] = errors
    return _json(status, payload)

"""The playback HTTP app: serves a recording to retailCRM's player at the recordUrl we sent it.

retailCRM plays a recording with `GET <recordUrl>?clientId=<module clientId>` and needs the right
Content-Type. A request reaches storage only through a token this service signed
(recordings.tokens), and only with the clientId of the account that token names.
"""

from __future__ import annotations

import email.utils
import hmac
import logging
import re
from dataclasses import dataclass
from typing import Callable, Iterator, Mapping

import bottle

from recordings.base import RecordingNotFound, RecordingStore, StorageUnavailable, StoredObject
from recordings.tokens import InvalidToken, RecordingRef, TokenCodec

logger = logging.getLogger(__name__)

MAX_CLIENT_ID_LENGTH = 256
RETRY_AFTER_SECONDS = 30
# Bigger chunks mean fewer, bigger socket writes: one stream went ~1.3x faster with 1 MiB than
# with 64 KiB. Each open stream holds a chunk, so the big ones come from a budget shared by all of
# them; streams beyond it get the small size. Memory stays bounded whatever the files' sizes.
MIN_CHUNK = 64 * 1024
MAX_CHUNK = 1024 * 1024
CHUNK_BUDGET = 8 * 1024 * 1024
_TEXT = "text/plain; charset=utf-8"
_REASONS = {
    400: "Bad request", 403: "Forbidden", 404: "Not found", 405: "Method not allowed",
    416: "Range not satisfiable", 500: "Internal server error", 503: "Storage unavailable, retry later",
}
# One byte range, RFC 7233 section 2.1; anything else (several ranges, other units) is ignored.
_RANGE = re.compile(r"\s*bytes\s*=\s*(?:(\d{1,18})\s*-\s*(\d{0,18})|-\s*(\d{1,18}))\s*", re.IGNORECASE)
_MAX_RANGE_HEADER = 200


class ChunkBudget:
    """Chunk sizes for open streams: MAX_CHUNK while the budget lasts, MIN_CHUNK beyond it."""

    def __init__(self, total: int):
        self.free = total

    def take(self) -> int:
        size = MAX_CHUNK
        while size > MIN_CHUNK and size > self.free:
            size //= 2
        self.free -= size
        return size

    def give(self, size: int) -> None:
        self.free += size


class AccessDenied(Exception):
    """clientId missing, malformed or not the one of the token's account."""


class UnknownAccount(Exception):
    """A validly signed token for an account this service no longer serves."""


class RangeNotSatisfiable(Exception):
    def __init__(self, size: int):
        super().__init__("range not satisfiable")
        self.size = size


@dataclass(frozen=True)
class ByteRange:
    start: int
    end: int  # inclusive

    @property
    def length(self) -> int:
        return self.end - self.start + 1


def make_app(store: RecordingStore, codec: TokenCodec, client_ids: Mapping[str, str],
             budget: ChunkBudget | None = None) -> bottle.Bottle:
    """client_ids: account name -> that account's CRM module clientId."""
    client_ids = dict(client_ids)
    budget = budget or ChunkBudget(CHUNK_BUDGET)
    app = bottle.Bottle()
    # Errors Bottle raises itself (no route, wrong method) get the same short plain-text answer.
    app.default_error_handler = _bottle_error

    @app.route("/records/<token>", method=["GET", "HEAD"])
    def record(token: str) -> bottle.HTTPResponse:
        try:
            ref = _verified_ref(codec, client_ids, token)
            _check_client_id(bottle.request.query.getall("clientId"), client_ids[ref.account])
            return _serve(store, ref, bottle.request, budget)
        except Exception as exc:  # every error becomes a status code in one place
            return error_response(exc)

    return app


def _verified_ref(codec: TokenCodec, client_ids: Mapping[str, str], token: str) -> RecordingRef:
    ref = codec.parse(token)
    if ref.account not in client_ids:
        raise UnknownAccount(ref.account)
    return ref


def _check_client_id(values: list[str], expected: str) -> None:
    """The query value arrives as latin-1 text holding the raw bytes the client sent; compare
    those bytes with the expected clientId's UTF-8 bytes in constant time."""
    if len(values) != 1:
        raise AccessDenied()
    try:
        given = values[0].encode("latin-1")
    except UnicodeEncodeError:
        raise AccessDenied() from None
    if not given or len(given) > MAX_CLIENT_ID_LENGTH or any(b < 0x20 or b == 0x7F for b in given):
        raise AccessDenied()
    if not hmac.compare_digest(given, expected.encode("utf-8")):
        raise AccessDenied()


def _serve(store: RecordingStore, ref: RecordingRef, request: bottle.BaseRequest,
           budget: ChunkBudget) -> bottle.HTTPResponse:
    chunk_size = budget.take()
    body: bytes | _Body = b""
    try:
        answer = _answer(store, ref, request, chunk_size)
        body = answer.body
        return answer
    finally:
        # The budget comes back when the body is closed (sent, or the player went away), or now
        # when there is no body to send.
        if isinstance(body, _Body):
            body.on_close = lambda: budget.give(chunk_size)
        else:
            budget.give(chunk_size)


def _answer(store: RecordingStore, ref: RecordingRef, request: bottle.BaseRequest,
            chunk_size: int) -> bottle.HTTPResponse:
    # A plain GET (a player starting) needs the whole object: one request to the store gives both
    # the headers and the bytes. Ranges, HEAD and conditional requests look at the metadata first.
    plain = request.method == "GET" and not any(request.headers.get(h) for h in ("Range", "If-None-Match", "If-Range"))
    if plain:
        obj, chunks = store.open(ref.name, chunk_size)
    else:
        obj, chunks = store.head(ref.name), None
    headers = {
        "Content-Type": obj.content_type,
        "Accept-Ranges": "bytes",
        "ETag": obj.etag,
        "Last-Modified": email.utils.formatdate(obj.last_modified.timestamp(), usegmt=True),
        "Cache-Control": "private, max-age=3600",
        "X-Content-Type-Options": "nosniff",
    }
    if _etag_matches(request.headers.get("If-None-Match"), obj.etag):
        return bottle.HTTPResponse(status=304, headers=headers)
    if request.query.get("download") == "1":
        headers["Content-Disposition"] = 'attachment; filename="call-%s.%s"' % (ref.call_id, ref.extension)

    # A stale If-Range means "send it all": the Range header is then not even looked at.
    wanted = None
    if _if_range_holds(request.headers.get("If-Range"), obj, headers["Last-Modified"]):
        wanted = parse_range(request.headers.get("Range"), obj.size)
    status = 200
    span = ByteRange(0, obj.size - 1)
    if wanted is not None:
        status, span = 206, wanted
        headers["Content-Range"] = "bytes %d-%d/%d" % (span.start, span.end, obj.size)
    headers["Content-Length"] = str(span.length)

    body: bytes | _Body = b""
    if request.method != "HEAD" and span.length > 0:
        if chunks is None:
            chunks = store.read(ref.name, span.start, span.end, chunk_size)
        # Take the first chunk now, so a store that fails lazily still gets a proper status code.
        body = _Body(chunks, ref)
    elif chunks is not None:
        _close(chunks)
    logger.info("serving recording account=%s call=%s status=%d bytes=%d method=%s",
                ref.account, ref.call_id, status, span.length, request.method)
    return bottle.HTTPResponse(body=body, status=status, headers=headers)


def parse_range(header: str | None, size: int) -> ByteRange | None:
    """The one byte range a Range header asks for, None to ignore the header (absent, malformed,
    several ranges), or RangeNotSatisfiable."""
    if not header or len(header) > _MAX_RANGE_HEADER:
        return None
    match = _RANGE.fullmatch(header)
    if match is None:
        return None
    first, last, suffix = match.groups()
    if suffix is not None:
        length = int(suffix)
        if length == 0 or size == 0:
            raise RangeNotSatisfiable(size)
        return ByteRange(max(0, size - length), size - 1)
    start = int(first)
    if last:
        end = int(last)
        if end < start:
            return None  # syntactically invalid: ignore, as RFC 7233 section 3.1 allows
    else:
        end = size - 1
    if start >= size:
        raise RangeNotSatisfiable(size)
    return ByteRange(start, min(end, size - 1))


def _etag_matches(header: str | None, etag: str) -> bool:
    # Weak comparison, RFC 7232 section 3.2.
    if not header:
        return False
    if header.strip() == "*":
        return True
    bare = etag.removeprefix("W/")
    return any(candidate.strip().removeprefix("W/") == bare for candidate in header.split(","))


def _if_range_holds(header: str | None, obj: StoredObject, last_modified: str) -> bool:
    # If-Range needs a strong match with the ETag or the exact Last-Modified date.
    if header is None:
        return True
    header = header.strip()
    if header.startswith(('"', "W/")):
        return not header.startswith("W/") and header == obj.etag
    return header == last_modified


class _Body:
    """The answer's body, chunk by chunk. Once headers are out an error can only cut the answer
    short: log it, and let the client see a body shorter than Content-Length. The WSGI server
    calls close() when the answer is done or the client went away, even if it never iterated."""

    def __init__(self, chunks: Iterator[bytes], ref: RecordingRef):
        self._chunks = iter(chunks)
        self._ref = ref
        self.on_close: Callable[[], None] | None = None
        try:
            self._first: bytes | None = next(self._chunks, b"")
        except BaseException:
            _close(self._chunks)
            raise

    def __iter__(self) -> Iterator[bytes]:
        try:
            if self._first:
                first, self._first = self._first, None
                yield first
            yield from self._chunks
        except Exception:
            logger.exception("reading recording account=%s call=%s failed mid-answer", self._ref.account,
                             self._ref.call_id)
        finally:
            self.close()

    def close(self) -> None:
        _close(self._chunks)
        on_close, self.on_close = self.on_close, None
        if on_close is not None:
            on_close()


def _close(chunks: Iterator[bytes]) -> None:
    close = getattr(chunks, "close", None)
    if close is not None:
        close()


def error_response(exc: Exception) -> bottle.HTTPResponse:
    """The one place where domain errors become status codes."""
    headers: dict[str, str] = {}
    if isinstance(exc, (InvalidToken, UnknownAccount, RecordingNotFound)):
        status = 404
    elif isinstance(exc, AccessDenied):
        status = 403
    elif isinstance(exc, RangeNotSatisfiable):
        status = 416
        headers["Content-Range"] = "bytes */%d" % exc.size
    elif isinstance(exc, StorageUnavailable):
        status = 503
        headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
        logger.warning("recording storage unavailable: %s", exc)
    else:
        status = 500
        # The traceback names no clientId: it is only ever compared, never put into a message.
        logger.exception("unexpected error serving a recording")
    if isinstance(exc, RecordingNotFound):
        logger.warning("recording not found: %s", exc)
    return _plain(status, headers)


def _plain(status: int, headers: Mapping[str, str] | None = None) -> bottle.HTTPResponse:
    body = (_REASONS.get(status, "Error") + "\n").encode("utf-8")
    return bottle.HTTPResponse(body=body, status=status,
                               headers={**(headers or {}), "Content-Type": _TEXT, "Content-Length": str(len(body)),
                                        "X-Content-Type-Options": "nosniff"})


def _bottle_error(res: bottle.HTTPError) -> bytes:
    """Catch-all for errors raised by Bottle itself: a fixed plain-text body, never a traceback
    and never the requested path."""
    if res.status_code >= 500:
        exc_info = bottle.request.environ.get("bottle.exc_info")
        logger.error("unexpected error in the playback app", exc_info=exc_info or res.exception)
    bottle.response.content_type = _TEXT
    bottle.response.set_header("X-Content-Type-Options", "nosniff")
    return (_REASONS.get(res.status_code, "Error") + "\n").encode("utf-8")

"""What every recording store offers, and the errors it may raise (pure definitions, no I/O)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Mapping, Protocol

# Content-Type by file extension: the CRM's player needs the right one or the audio will not play.
CONTENT_TYPES = {
    "mp3": "audio/mpeg",
    "wav": "audio/wav",
    "ogg": "audio/ogg",
    "opus": "audio/ogg",
}


def content_type_of(path: str | Path) -> str:
    return CONTENT_TYPES.get(Path(path).suffix.lower().lstrip("."), "application/octet-stream")


class StorageError(Exception):
    """Base of the storage domain errors; messages name the key, never credentials."""


class RecordingNotFound(StorageError):
    """No object under that key (or a local source file that does not exist / cannot be read)."""


class StorageUnavailable(StorageError):
    """The store cannot be reached or answered with a server error: try again later."""


@dataclass(frozen=True)
class StoredObject:
    key: str
    size: int
    content_type: str
    etag: str  # quoted, as an HTTP ETag header carries it
    last_modified: dt.datetime  # aware, UTC


class RecordingStore(Protocol):
    """A place recordings live once FreeSWITCH has finished writing them."""

    def put_file(self, path: Path, key: str, content_type: str, metadata: Mapping[str, str]) -> StoredObject:
        """Store a local file under `key` and return the stored object once the store confirms its
        size equals the file's. Raises RecordingNotFound when `path` cannot be read and
        StorageUnavailable when the store is down or the size does not match."""

    def head(self, key: str) -> StoredObject:
        """Raises RecordingNotFound or StorageUnavailable."""

    def read(self, key: str, start: int, end: int, chunk_size: int = 64 * 1024) -> Iterator[bytes]:
        """Bytes start..end inclusive, streamed in chunks, never the whole object in memory.
        Raises RecordingNotFound or StorageUnavailable before the first chunk is yielded."""

    def open(self, key: str, chunk_size: int = 64 * 1024) -> tuple[StoredObject, Iterator[bytes]]:
        """The whole object in one request: what head() tells, and the bytes read() would give.
        Raises RecordingNotFound or StorageUnavailable before returning."""

    def check(self) -> None:
        """Raise StorageUnavailable when the store (bucket, directory) is not usable."""

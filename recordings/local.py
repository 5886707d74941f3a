"""Recordings kept in a local directory: the embedded default for the demo and small installs.

Owns the recordings directory on disk. Every write goes to a temporary file in the same directory,
is fsynced and then renamed over the target, so a reader sees either the old object or the new one,
never half a file. Content type and metadata live in a `<file>.meta.json` sidecar, written the same way.
Recordings are 0640 and the directories this creates 0750, whatever the umask (fs_crm.filemodes):
the service's group (a playback or backup user) may read them, nobody else.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import BinaryIO, Iterator, Mapping

from fs_crm.filemodes import SHARED_DIR, SHARED_FILE, make_dirs
from recordings.base import (
    RecordingNotFound,
    StorageUnavailable,
    StoredObject,
    content_type_of,
)

logger = logging.getLogger(__name__)

META_SUFFIX = ".meta.json"
_TMP_SUFFIX = ".tmp"
_COPY_CHUNK = 1024 * 1024


def _safe_content_type(content_type: str) -> bool:
    # It ends up in a Content-Type header: printable ASCII only, so it can never split a header.
    return bool(content_type) and len(content_type) <= 200 and all(" " <= ch <= "~" for ch in content_type)


class LocalStore:
    """A RecordingStore (recordings.base) over one directory; key `a/b/c.wav` is `directory/a/b/c.wav`."""

    def __init__(self, directory: Path):
        self.directory = Path(directory)

    # -- keys ------------------------------------------------------------------------------------

    def _path(self, key: str) -> Path:
        """The file behind `key`. Keys come from tokens.recording_name, but are still checked here
        so that no key can name a file outside the directory."""
        if not isinstance(key, str) or not key or len(key) > 1024:
            raise ValueError("invalid storage key")
        if key.startswith(("/", "~")) or ".." in key or "\\" in key or "\0" in key:
            raise ValueError("invalid storage key %r" % key)
        parts = key.split("/")
        if any(part in ("", ".") for part in parts):
            raise ValueError("invalid storage key %r" % key)
        if parts[-1].endswith((META_SUFFIX, _TMP_SUFFIX)):
            raise ValueError("storage key %r collides with the store's own files" % key)
        base = self.directory.resolve()
        path = base.joinpath(*parts)
        # A symlink inside the directory must not lead out of it either.
        if not path.resolve().is_relative_to(base):
            raise ValueError("storage key %r leaves the store directory" % key)
        return path

    @staticmethod
    def _meta_path(path: Path) -> Path:
        return path.with_name(path.name + META_SUFFIX)

    # -- writing ---------------------------------------------------------------------------------

    def put_file(self, path: Path, key: str, content_type: str, metadata: Mapping[str, str]) -> StoredObject:
        target = self._path(key)
        if not _safe_content_type(content_type):
            raise ValueError("invalid content type %r" % content_type)
        meta = json.dumps({"content_type": content_type, "metadata": {str(k): str(v) for k, v in metadata.items()}},
                          sort_keys=True).encode("utf-8")
        try:
            source = open(path, "rb")
        except OSError as exc:
            raise RecordingNotFound("cannot read recording %s for key %s: %s" % (path, key, exc.strerror)) from None
        with source:
            try:
                source_size = os.fstat(source.fileno()).st_size
            except OSError as exc:
                raise RecordingNotFound("cannot read recording %s: %s" % (path, exc.strerror)) from None
            try:
                make_dirs(target.parent, SHARED_DIR)
            except OSError as exc:
                raise StorageUnavailable("cannot create %s for key %s: %s" % (target.parent, key, exc.strerror)) from None
            copied = self._write_atomic(target, key, source=source)
        if copied != source_size:
            raise StorageUnavailable("stored %d bytes for key %s but %s has %d" % (copied, key, path, source_size))
        self._write_atomic(self._meta_path(target), key, data=meta)
        stored = self.head(key)
        if stored.size != source_size:
            raise StorageUnavailable("key %s holds %d bytes, expected %d" % (key, stored.size, source_size))
        logger.debug("stored %s (%d bytes) as %s", path, copied, key)
        return stored

    def _write_atomic(self, target: Path, key: str, *, source: BinaryIO | None = None, data: bytes = b"") -> int:
        """Write `source` (or `data`) to a temporary file next to `target`, fsync, rename over it.
        Errors reading `source` are RecordingNotFound, errors on our side StorageUnavailable."""
        try:
            fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=".%s." % target.name, suffix=_TMP_SUFFIX)
        except OSError as exc:
            raise StorageUnavailable("cannot write key %s: %s" % (key, exc.strerror)) from None
        written = 0
        try:
            with os.fdopen(fd, "wb") as out:
                if source is None:
                    self._write(out, data, key)
                    written = len(data)
                else:
                    while True:
                        try:
                            chunk = source.read(_COPY_CHUNK)
                        except OSError as exc:
                            raise RecordingNotFound("cannot read the source of key %s: %s" % (key, exc.strerror)) from None
                        if not chunk:
                            break
                        self._write(out, chunk, key)
                        written += len(chunk)
                try:
                    out.flush()
                    os.fsync(out.fileno())
                except OSError as exc:
                    raise StorageUnavailable("cannot write key %s: %s" % (key, exc.strerror)) from None
            try:
                os.chmod(tmp_name, SHARED_FILE)  # mkstemp made it 0600
                os.replace(tmp_name, target)
            except OSError as exc:
                raise StorageUnavailable("cannot write key %s: %s" % (key, exc.strerror)) from None
        except BaseException:
            try:
                os.unlink(tmp_name)
            except OSError:
                pass
            raise
        self._fsync_dir(target.parent)
        return written

    @staticmethod
    def _write(out: BinaryIO, chunk: bytes, key: str) -> None:
        try:
            out.write(chunk)
        except OSError as exc:
            raise StorageUnavailable("cannot write key %s: %s" % (key, exc.strerror)) from None

    @staticmethod
    def _fsync_dir(directory: Path) -> None:
        # Makes the rename itself durable; not every platform lets a directory be opened.
        try:
            fd = os.open(directory, os.O_RDONLY)
        except OSError:
            return
        try:
            os.fsync(fd)
        except OSError:
            pass
        finally:
            os.close(fd)

    # -- reading ---------------------------------------------------------------------------------

    def head(self, key: str) -> StoredObject:
        path = self._path(key)
        try:
            st = path.stat()
        except (FileNotFoundError, NotADirectoryError):
            raise RecordingNotFound("no recording under key %s" % key) from None
        except OSError as exc:
            raise StorageUnavailable("cannot stat key %s: %s" % (key, exc.strerror)) from None
        if not path.is_file():
            raise RecordingNotFound("no recording under key %s" % key)
        return StoredObject(
            key=key,
            size=st.st_size,
            content_type=self._content_type(path, key),
            # Size and mtime change whenever the content is replaced, and cost no read of the file.
            etag='"%x-%x"' % (st.st_size, st.st_mtime_ns),
            last_modified=dt.datetime.fromtimestamp(st.st_mtime_ns // 1_000_000_000, tz=dt.timezone.utc),
        )

    def _content_type(self, path: Path, key: str) -> str:
        try:
            meta = json.loads(self._meta_path(path).read_bytes())
            content_type = meta["content_type"]
        except (OSError, ValueError, KeyError, TypeError):
            return content_type_of(key)
        if not isinstance(content_type, str) or not _safe_content_type(content_type):
            return content_type_of(key)
        return content_type

    def read(self, key: str, start: int, end: int, chunk_size: int = 64 * 1024) -> Iterator[bytes]:
        """Bytes start..end inclusive. The file is opened here, before any chunk is asked for, so a
        missing object raises at once rather than in the middle of a response."""
        if start < 0 or end < start - 1 or chunk_size <= 0:
            raise ValueError("invalid range %d-%d" % (start, end))
        path = self._path(key)
        try:
            fh = open(path, "rb")
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            raise RecordingNotFound("no recording under key %s" % key) from None
        except OSError as exc:
            raise StorageUnavailable("cannot open key %s: %s" % (key, exc.strerror)) from None
        try:
            fh.seek(start)
        except OSError as exc:
            fh.close()
            raise StorageUnavailable("cannot read key %s: %s" % (key, exc.strerror)) from None
        return _Chunks(fh, end - start + 1, chunk_size, key)

    def open(self, key: str, chunk_size: int = 64 * 1024) -> tuple[StoredObject, Iterator[bytes]]:
        stored = self.head(key)
        chunks = self.read(key, 0, stored.size - 1, chunk_size) if stored.size else iter(())
        return stored, chunks

    def check(self) -> None:
        try:
            make_dirs(self.directory, SHARED_DIR)
        except OSError as exc:
            raise StorageUnavailable("recordings directory %s is not usable: %s" % (self.directory, exc.strerror)) from None
        if not self.directory.is_dir():
            raise StorageUnavailable("recordings directory %s is not a directory" % self.directory)
        try:
            fd, probe = tempfile.mkstemp(dir=self.directory, prefix=".check.", suffix=_TMP_SUFFIX)
            os.close(fd)
            os.unlink(probe)
        except OSError as exc:
            raise StorageUnavailable("recordings directory %s is not writable: %s" % (self.directory, exc.strerror)) from None


class _Chunks:
    """An iterator over an open file's byte range that closes the file when exhausted or closed,
    even if it is never iterated (a WSGI server calls close() on the response body)."""

    def __init__(self, fh: BinaryIO, remaining: int, chunk_size: int, key: str):
        self._fh = fh
        self._remaining = remaining
        self._chunk_size = chunk_size
        self._key = key

    def __iter__(self) -> _Chunks:
        return self

    def __next__(self) -> bytes:
        if self._remaining <= 0 or self._fh.closed:
            self.close()
            raise StopIteration
        try:
            chunk = self._fh.read(min(self._chunk_size, self._remaining))
        except OSError as exc:
            self.close()
            raise StorageUnavailable("cannot read key %s: %s" % (self._key, exc.strerror)) from None
        if not chunk:  # the file shrank under us
            self.close()
            raise StopIteration
        self._remaining -= len(chunk)
        return chunk

    def close(self) -> None:
        self._fh.close()

"""The S3 boundary (AWS S3 and S3-compatible stores such as MinIO): the only importer of boto3/botocore.

Uploads, HEADs and bucket checks go through boto3. Reads (playback) go to a presigned URL over a
urllib3 pool of their own: same credentials and signature, without botocore's per-request and
per-chunk machinery, which was most of what kept playback below a direct S3 GET.

Every way a request can fail becomes one of two domain errors: `RecordingNotFound` (no such object,
or a local file that cannot be read) or `StorageUnavailable` (try again later, or an operator must
fix the bucket, the credentials or the policy; those are also logged at ERROR here). Credentials
come from boto3's usual sources (environment, shared files, instance roles) and never reach a log
line or an exception message.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import logging
import os
import re
import stat
import time
from pathlib import Path
from typing import Any, Iterator, Mapping
from urllib.parse import quote, urlsplit
from urllib.request import getproxies, proxy_bypass

import boto3
import urllib3
from boto3.exceptions import S3UploadFailedError
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    CredentialRetrievalError,
    NoCredentialsError,
    ParamValidationError,
    PartialCredentialsError,
)
from urllib3.exceptions import HTTPError as Urllib3Error
from urllib3.exceptions import TimeoutError as Urllib3Timeout

from recordings.base import RecordingNotFound, StorageUnavailable, StoredObject, content_type_of

logger = logging.getLogger(__name__)

# S3 answers that mean "busy, ask again", even though some come with a 4xx status.
_TRANSIENT_CODES = frozenset({
    "SlowDown", "Throttling", "ThrottlingException", "RequestLimitExceeded", "TooManyRequests",
    "TooManyRequestsException", "RequestThrottled", "RequestTimeout", "ServiceUnavailable", "InternalError",
})
_CREDENTIAL_ERRORS = (NoCredentialsError, PartialCredentialsError, CredentialRetrievalError)
_S3_ERRORS = (ClientError, BotoCoreError, S3UploadFailedError)
# User metadata travels in x-amz-meta-* HTTP headers, which carry ASCII only (botocore refuses
# anything else). Values are percent-encoded; "%" itself is encoded too, so unquote() always
# gives the original back.
_VALUE_SAFE = "".join(chr(c) for c in range(0x20, 0x7F) if chr(c) != "%")
# Multipart only for big files; parts are read from the file as they are sent, so memory stays at
# a few buffers whatever the size.
_MULTIPART_THRESHOLD = 16 * 1024 * 1024
_MULTIPART_CHUNKSIZE = 8 * 1024 * 1024
# Reads go to a presigned URL (signed here, no network) over a plain urllib3 pool: botocore's
# request and response machinery cost about a fifth of a playback's CPU. It is valid far longer
# than a read can take to start.
_PRESIGNED_SECONDS = 300
_ERROR_CODE = re.compile(rb"<Code>([^<]{1,100})</Code>")
_RETRY_STATUSES = frozenset({500, 502, 503, 504})


class S3Store:
    """A `recordings.base.RecordingStore` in one S3 bucket, below an optional key prefix."""

    def __init__(self, bucket: str, region: str | None = None, endpoint_url: str | None = None, prefix: str = "",
                 connect_timeout: float = 5.0, read_timeout: float = 30.0, max_attempts: int = 2):
        if not bucket:
            raise ValueError("an S3 store needs a bucket name")
        self.bucket = bucket
        self.endpoint_url = endpoint_url
        prefix = prefix.strip("/")
        self.prefix = prefix + "/" if prefix else ""
        config = Config(
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            # total_max_attempts counts the first try (botocore's own "max_attempts" key would count
            # only the retries); "standard" mode backs off with jitter and retries connection errors,
            # timeouts, throttling and 5xx answers.
            retries={"total_max_attempts": max_attempts, "mode": "standard"},
            signature_version="s3v4",
            # One connection per concurrent playback or upload; botocore's default 10 would make
            # each one beyond that pay a new TLS handshake (and log a warning).
            max_pool_connections=64,
            # S3-compatible stores rarely have wildcard DNS for virtual-host bucket names.
            s3={"addressing_style": "path"} if endpoint_url else None,
            # A recording is read to be streamed on: a whole-object CRC32 (botocore's default check
            # on reads since 1.36) could only fail after the last byte went to the player, and it was
            # the biggest single cost of playback. Uploads still send a checksum that S3 verifies.
            response_checksum_validation="when_required",
        )
        # Own session: boto3's default session is process-wide state. Building the client does no
        # I/O; credentials are resolved on the first request. Clients are thread-safe, so one
        # serves every greenlet.
        self._client = boto3.session.Session().client("s3", region_name=region, endpoint_url=endpoint_url,
                                                      config=config)
        # No worker threads: under gevent they would be greenlets anyway, and one part at a time
        # keeps a single connection and bounded memory per upload.
        self._transfer = TransferConfig(multipart_threshold=_MULTIPART_THRESHOLD,
                                        multipart_chunksize=_MULTIPART_CHUNKSIZE, use_threads=False)
        self._reads = _ReadPool(connect_timeout, read_timeout, pool_size=64)
        self._read_attempts = max(1, max_attempts)

    def __repr__(self) -> str:
        return "S3Store(bucket=%r, endpoint_url=%r, prefix=%r)" % (self.bucket, self.endpoint_url, self.prefix)

    def put_file(self, path: Path, key: str, content_type: str, metadata: Mapping[str, str]) -> StoredObject:
        full = self._key(key)
        # A missing or unreadable file is this call's problem, not the store's: find out before S3
        # is involved (and never open a FIFO or device, which could block).
        try:
            info = os.stat(path)
            if not stat.S_ISREG(info.st_mode):
                raise RecordingNotFound("recording %s for %s is not a regular file" % (path, full))
            with open(path, "rb"):
                pass
        except OSError as exc:
            raise RecordingNotFound("cannot read recording %s for %s: %s" % (path, full, exc.strerror or exc)) from exc
        try:
            # upload_file (not upload_fileobj) because it streams parts from the file by name, while
            # file objects are read into memory one part at a time.
            self._client.upload_file(str(path), self.bucket, full, Config=self._transfer,
                                     ExtraArgs={"ContentType": content_type, "Metadata": _wire_metadata(metadata)})
        except _S3_ERRORS as exc:
            raise self._upload_error(exc, full) from exc
        except OSError as exc:
            # Not a network error (botocore wraps those): the file went away or broke while being read.
            raise RecordingNotFound("recording %s for %s could not be read while uploading: %s"
                                    % (path, full, exc.strerror or exc)) from exc
        try:
            stored = self._head(key, full, "check upload of")
        except RecordingNotFound as exc:
            raise StorageUnavailable("S3 lost %s/%s right after storing it" % (self.bucket, full)) from exc
        if stored.size != info.st_size:
            raise StorageUnavailable("S3 holds %d bytes for %s/%s but %s has %d"
                                     % (stored.size, self.bucket, full, path, info.st_size))
        return stored

    def head(self, key: str) -> StoredObject:
        full = self._key(key)
        try:
            return self._head(key, full, "head")
        except RecordingNotFound:
            # A HEAD answer has no body, so a 404 cannot tell a missing key from a missing bucket;
            # a missing bucket is an operator problem, not a missing recording.
            self._head_bucket("head", full)
            raise

    def read(self, key: str, start: int, end: int, chunk_size: int = 64 * 1024) -> Iterator[bytes]:
        if start < 0 or end < start or chunk_size <= 0:
            raise ValueError("bad range %d-%d (chunk size %d) for %s" % (start, end, chunk_size, key))
        full = self._key(key)
        # Not a generator: the request is made here, so errors reach the caller before it has sent
        # a status line.
        response = self._get(full, "read", {"Range": "bytes=%d-%d" % (start, end)})
        wanted = end - start + 1
        length = response.headers.get("Content-Length")
        if length != str(wanted):
            # The caller sized its answer from head(); fewer bytes means the object changed since.
            response.close()
            raise StorageUnavailable("S3 object %s/%s has %s bytes in range %d-%d, not %d (%s)"
                                     % (self.bucket, full, length, start, end, wanted,
                                        response.headers.get("Content-Range")))
        return _BodyChunks(response, chunk_size, "%s/%s" % (self.bucket, full))

    def open(self, key: str, chunk_size: int = 64 * 1024) -> tuple[StoredObject, Iterator[bytes]]:
        """One GET instead of HEAD then GET: a playback starts one round trip sooner."""
        if chunk_size <= 0:
            raise ValueError("bad chunk size %d for %s" % (chunk_size, key))
        full = self._key(key)
        response = self._get(full, "open", {})
        try:
            stored = _stored(key, _metadata_of(response.headers))
        except (KeyError, ValueError, TypeError) as exc:
            response.close()
            raise StorageUnavailable("S3 answer for %s/%s lacks usable headers: %s" % (self.bucket, full, exc)) from None
        return stored, _BodyChunks(response, chunk_size, "%s/%s" % (self.bucket, full))

    def check(self) -> None:
        self._head_bucket("check", None)

    # -- internals --

    def _get(self, full: str, action: str, headers: dict[str, str]) -> urllib3.BaseHTTPResponse:
        """A GET of the object, retried like botocore's standard mode would (connection errors,
        timeouts and 5xx answers); a 2xx answer comes back with its body unread."""
        where = "%s/%s" % (self.bucket, full)
        try:
            url = self._client.generate_presigned_url("get_object", Params={"Bucket": self.bucket, "Key": full},
                                                      ExpiresIn=_PRESIGNED_SECONDS)
        except _S3_ERRORS as exc:
            raise self._translate(exc, action, full) from exc
        for attempt in range(1, self._read_attempts + 1):
            last = attempt == self._read_attempts
            try:
                response = self._reads.get(url, headers)
            except Urllib3Timeout as exc:
                error: Exception = StorageUnavailable("S3 %s of %s failed: timeout (%s)" % (action, where, exc))
            except (Urllib3Error, OSError) as exc:
                error = StorageUnavailable("S3 %s of %s failed: %s" % (action, where, exc))
            else:
                if 200 <= response.status < 300:
                    return response
                body = response.read(4096, decode_content=False) if response.status != 304 else b""
                response.close()
                match = _ERROR_CODE.search(body)
                code = match.group(1).decode("ascii", "replace") if match else ""
                error = self._classify(response.status, code, "", action, full)
                if response.status not in _RETRY_STATUSES and code not in _TRANSIENT_CODES:
                    raise error
            if last:
                raise error
            time.sleep(0.05 * attempt)  # a blip, not an outage: the player is waiting
        raise AssertionError("unreachable")

    def _key(self, key: str) -> str:
        if not key:
            raise ValueError("empty recording key")
        return self.prefix + key

    def _head(self, key: str, full: str, action: str) -> StoredObject:
        try:
            response = self._client.head_object(Bucket=self.bucket, Key=full)
        except _S3_ERRORS as exc:
            raise self._translate(exc, action, full) from exc
        return _stored(key, response)

    def _head_bucket(self, action: str, full: str | None) -> None:
        try:
            self._client.head_bucket(Bucket=self.bucket)
        except _S3_ERRORS as exc:
            raise self._translate(exc, action, full, bucket_request=True) from exc

    def _upload_error(self, exc: Exception, full: str) -> Exception:
        # The transfer manager wraps a ClientError into S3UploadFailedError (as its context, not its cause).
        cause = exc.__context__ if isinstance(exc, S3UploadFailedError) else exc
        if isinstance(cause, _S3_ERRORS) and not isinstance(cause, S3UploadFailedError):
            error = self._translate(cause, "upload", full)
        else:
            error = StorageUnavailable("S3 upload of %s/%s failed: %s" % (self.bucket, full, exc))
        if isinstance(error, RecordingNotFound):  # a 404 on upload can only be about the bucket
            error = StorageUnavailable("S3 upload of %s/%s failed: not found" % (self.bucket, full))
        return error

    def _translate(self, exc: Exception, action: str, full: str | None, bucket_request: bool = False) -> Exception:
        """The domain error for a boto3/botocore exception; operator problems are logged here."""
        where = "%s/%s" % (self.bucket, full) if full else "bucket %s" % self.bucket
        if isinstance(exc, ClientError):
            error: dict[str, Any] = exc.response.get("Error") or {}
            status = int((exc.response.get("ResponseMetadata") or {}).get("HTTPStatusCode") or 0)
            return self._classify(status, str(error.get("Code") or ""), str(error.get("Message") or ""), action,
                                  full, bucket_request)
        if isinstance(exc, _CREDENTIAL_ERRORS):
            logger.error("S3 %s of %s: no usable credentials (environment, shared files, instance role): %s",
                         action, where, type(exc).__name__)
            return StorageUnavailable("S3 %s of %s: no usable credentials" % (action, where))
        if isinstance(exc, ParamValidationError):
            return ValueError("invalid S3 request (%s of %s): %s" % (action, where, exc))
        # Connection refused or reset, timeouts, DNS: the store is unreachable for now.
        return StorageUnavailable("S3 %s of %s failed: %s" % (action, where, exc))

    def _classify(self, status: int, code: str, message: str, action: str, full: str | None,
                  bucket_request: bool = False) -> Exception:
        """The domain error for an S3 error answer; operator problems are logged here."""
        where = "%s/%s" % (self.bucket, full) if full else "bucket %s" % self.bucket
        if code == "NoSuchBucket" or (bucket_request and status == 404):
            logger.error("S3 %s of %s: bucket %s does not exist", action, where, self.bucket)
            return StorageUnavailable("S3 bucket %s does not exist (%s of %s)" % (self.bucket, action, where))
        if status == 404 or code in ("NoSuchKey", "NotFound"):
            return RecordingNotFound("no S3 object %s" % where)
        if status == 416 or code == "InvalidRange":
            # The caller sized the range from head(): the object has changed since.
            return StorageUnavailable("S3 %s of %s: range not satisfiable" % (action, where))
        if status >= 500 or status in (408, 429) or code in _TRANSIENT_CODES:
            return StorageUnavailable("S3 %s of %s failed: HTTP %s %s" % (action, where, status, code))
        # Access denied, bad credentials, clock skew, a malformed request: retrying will not
        # help until someone fixes the configuration. Only code and message are logged: the
        # error body of a signature mismatch also echoes the access key id.
        logger.error("S3 refused %s of %s: HTTP %s %s %s", action, where, status, code, message)
        return StorageUnavailable("S3 refused %s of %s: HTTP %s %s" % (action, where, status, code))


class _ReadPool:
    """Keep-alive connections for presigned GETs, honouring what botocore honours from the
    environment: HTTP(S)_PROXY / NO_PROXY and AWS_CA_BUNDLE."""

    def __init__(self, connect_timeout: float, read_timeout: float, pool_size: int):
        self._options: dict[str, Any] = {
            "maxsize": pool_size, "block": False, "retries": False,
            "timeout": urllib3.Timeout(connect=connect_timeout, read=read_timeout),
            "ca_certs": os.environ.get("AWS_CA_BUNDLE") or None,
        }
        self._proxies = getproxies()
        self._direct = urllib3.PoolManager(**self._options)
        self._via_proxy: dict[str, urllib3.ProxyManager] = {}

    def get(self, url: str, headers: Mapping[str, str]) -> urllib3.BaseHTTPResponse:
        parts = urlsplit(url)
        proxy = self._proxies.get(parts.scheme)
        manager: urllib3.PoolManager = self._direct
        if proxy and not proxy_bypass(parts.hostname or ""):
            manager = self._via_proxy.get(proxy) or self._via_proxy.setdefault(
                proxy, urllib3.ProxyManager(proxy, **self._options))
        return manager.request("GET", url, headers=dict(headers), preload_content=False, redirect=False)


class _BodyChunks:
    """The chunks of a GET answer's body, closing it once drained, on error, or on close(): WSGI
    servers call close() on a response iterable, so an aborted download frees its connection."""

    def __init__(self, response: urllib3.BaseHTTPResponse, chunk_size: int, where: str):
        self._response: urllib3.BaseHTTPResponse | None = response
        self._chunk_size = chunk_size
        self._where = where

    def __iter__(self) -> _BodyChunks:
        return self

    def __next__(self) -> bytes:
        response = self._response
        if response is None:
            raise StopIteration
        try:
            # What has arrived, up to a chunk: the player gets bytes as soon as S3 sends them.
            # Recordings are stored without a Content-Encoding: the bytes are the file's.
            chunk = response.read1(self._chunk_size, decode_content=False)
        except (Urllib3Error, OSError) as exc:
            # The status line has gone out already; the HTTP layer aborts the response.
            self.close()
            raise StorageUnavailable("S3 read of %s broke off: %s" % (self._where, exc)) from exc
        if not chunk:
            self.close()
            raise StopIteration
        return chunk

    def close(self) -> None:
        response, self._response = self._response, None
        if response is not None:
            if not response.closed:  # not drained: the connection cannot be reused
                response.close()
            response.release_conn()

    def __del__(self) -> None:
        self.close()


def _metadata_of(headers: Mapping[str, str]) -> dict:
    """A GET answer's headers in the shape boto3 gives a HEAD answer."""
    modified = email.utils.parsedate_to_datetime(headers["Last-Modified"])
    return {"ETag": headers.get("ETag"), "LastModified": modified, "ContentLength": int(headers["Content-Length"]),
            "ContentType": headers.get("Content-Type")}


def _wire_metadata(metadata: Mapping[str, str]) -> dict[str, str]:
    # S3 stores metadata names lower-case; sending them that way means what we read back matches.
    return {quote(str(name).strip().lower(), safe="-_.").lower(): quote(str(value), safe=_VALUE_SAFE)
            for name, value in metadata.items()}


def _stored(key: str, response: dict) -> StoredObject:
    """A HEAD or GET answer's metadata."""
    etag = response.get("ETag") or '""'
    if not etag.startswith(('"', 'W/"')):  # some S3-compatible stores leave the quotes off
        etag = '"%s"' % etag
    modified = response["LastModified"]
    if modified.tzinfo is None:
        modified = modified.replace(tzinfo=dt.timezone.utc)
    return StoredObject(key=key, size=int(response["ContentLength"]),
                        content_type=response.get("ContentType") or content_type_of(key),
                        etag=etag, last_modified=modified.astimezone(dt.timezone.utc))

"""S3Store against moto's real S3 HTTP server, plus tiny raw-socket servers for the failures moto
cannot produce (a hung store, canned error answers, a body that breaks off).

moto runs in a child process: tracemalloc traces the whole process, and moto materialises the
whole object for every GET, so an in-process server would hide whether the client streams.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import math
import os
import shutil
import socket
import struct
import threading
import time
import tracemalloc
import uuid
import wave
from pathlib import Path
from urllib.parse import unquote

import pytest
from moto_s3 import (
    BUCKET,
    CAPTURES,
    MB,
    REGION,
    SECRET,
    MotoProcess,
    admin_client,
    free_port,
    use_fake_aws_credentials,
)

from recordings.base import RecordingNotFound, StorageUnavailable
from recordings.s3 import S3Store


def new_name(ext: str = "wav") -> str:
    return "shop/2026/11/26/%s.%s" % (uuid.uuid4(), ext)


@pytest.fixture(scope="module")
def moto(tmp_path_factory):
    server = MotoProcess(tmp_path_factory.mktemp("moto") / "moto.log")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def admin(moto):
    client = admin_client(moto.endpoint)
    client.create_bucket(Bucket=BUCKET)
    return client


@pytest.fixture(autouse=True)
def aws_env(monkeypatch, tmp_path):
    use_fake_aws_credentials(monkeypatch, tmp_path)


def make_store(endpoint: str, bucket: str = BUCKET, **options) -> S3Store:
    # Small timeouts and a single attempt: a store that is down must fail these tests fast.
    options = {"connect_timeout": 1.0, "read_timeout": 2.0, "max_attempts": 1, **options}
    return S3Store(bucket, region=REGION, endpoint_url=endpoint, **options)


@pytest.fixture
def store(moto, admin):
    return make_store(moto.endpoint)


@pytest.fixture
def wav_file(tmp_path) -> Path:
    path = tmp_path / "call.wav"
    captured = sorted(CAPTURES.glob("*.wav"))
    if captured:
        shutil.copyfile(captured[0], path)
        return path
    # One second of a 440 Hz tone, 8 kHz 16-bit mono: what FreeSWITCH records for a narrowband call.
    frames = b"".join(struct.pack("<h", int(8000 * math.sin(2 * math.pi * 440 * i / 8000))) for i in range(8000))
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(8000)
        out.writeframes(frames)
    return path


def random_file(path: Path, size: int) -> str:
    """Write `size` random bytes without holding them all; returns their sha256."""
    digest = hashlib.sha256()
    with open(path, "wb") as out:
        left = size
        while left:
            block = os.urandom(min(left, MB))
            digest.update(block)
            out.write(block)
            left -= len(block)
    return digest.hexdigest()


def assert_quick(started: float, limit: float = 3.0) -> None:
    assert time.monotonic() - started < limit


def assert_no_secret(caplog, *errors: BaseException) -> None:
    assert SECRET not in caplog.text
    for error in errors:
        assert SECRET not in str(error)


# -- against moto --


def test_given_wav_when_put_file_then_content_type_metadata_and_stored_object(store, admin, wav_file):
    name = new_name()
    metadata = {"call-id": "3f8a-uuid", "Account": "shop", "caller-name": "Иван Петров 100%"}

    stored = store.put_file(wav_file, name, "audio/wav", metadata)

    assert stored.key == name
    assert stored.size == wav_file.stat().st_size
    assert stored.content_type == "audio/wav"
    head = admin.head_object(Bucket=BUCKET, Key=name)
    assert stored.etag == head["ETag"] and stored.etag.startswith('"') and stored.etag.endswith('"')
    assert stored.last_modified.utcoffset() == dt.timedelta(0)
    assert abs(stored.last_modified - dt.datetime.now(dt.timezone.utc)) < dt.timedelta(minutes=5)
    assert head["ContentType"] == "audio/wav"
    # Names go lower-case ASCII, values percent-encoded so that non-ASCII cannot break the header.
    assert set(head["Metadata"]) == {"call-id", "account", "caller-name"}
    assert head["Metadata"]["call-id"] == "3f8a-uuid"
    assert head["Metadata"]["account"] == "shop"
    assert head["Metadata"]["caller-name"].isascii()
    assert unquote(head["Metadata"]["caller-name"]) == "Иван Петров 100%"
    assert admin.get_object(Bucket=BUCKET, Key=name)["Body"].read() == wav_file.read_bytes()
    assert store.head(name) == stored


def test_given_missing_key_when_head_then_recording_not_found(store):
    with pytest.raises(RecordingNotFound, match="shop/2026"):
        store.head(new_name())


def test_given_missing_key_when_read_then_recording_not_found_before_any_chunk(store):
    with pytest.raises(RecordingNotFound):
        store.read(new_name(), 0, 99)


def test_given_object_when_read_full_and_middle_range_then_exact_bytes(store, tmp_path):
    path = tmp_path / "call.wav"
    path.write_bytes(os.urandom(300_000))
    data = path.read_bytes()
    name = new_name()
    store.put_file(path, name, "audio/wav", {})

    assert b"".join(store.read(name, 0, len(data) - 1)) == data
    chunks = list(store.read(name, 1000, 250_000, chunk_size=4096))
    assert b"".join(chunks) == data[1000:250_001]
    assert max(len(chunk) for chunk in chunks) <= 4096
    assert b"".join(store.read(name, 7, 7)) == data[7:8]


def test_given_object_when_opened_then_one_get_gives_metadata_and_exact_bytes(store, tmp_path):
    path = tmp_path / "call.wav"
    path.write_bytes(os.urandom(200_000))
    name = new_name()
    put = store.put_file(path, name, "audio/wav", {})
    stored, chunks = store.open(name, chunk_size=8192)
    assert (stored.size, stored.content_type, stored.etag) == (200_000, "audio/wav", put.etag)
    assert b"".join(chunks) == path.read_bytes()
    with pytest.raises(RecordingNotFound):
        store.open(new_name())


def test_given_10mb_object_when_read_in_chunks_then_memory_stays_bounded(store, tmp_path):
    path = tmp_path / "long.wav"
    expected = random_file(path, 10 * MB)
    name = new_name()
    store.put_file(path, name, "audio/wav", {})
    store.head(name)  # warm up: botocore loads its models and endpoint rules on first use

    digest, total = hashlib.sha256(), 0
    tracemalloc.start()
    try:
        for chunk in store.read(name, 0, 10 * MB - 1):
            digest.update(chunk)
            total += len(chunk)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert total == 10 * MB and digest.hexdigest() == expected
    assert peak < 2 * MB, "peak %d bytes while streaming 10 MB" % peak


def test_given_file_above_multipart_threshold_when_put_file_then_stored_whole_with_bounded_memory(
        store, admin, tmp_path):
    path = tmp_path / "very-long.wav"
    size = 17 * MB  # above the 16 MB multipart threshold: 8 + 8 + 1 MB parts
    expected = random_file(path, size)
    name = new_name()
    store.check()  # warm up: botocore loads its models and endpoint rules on first use

    tracemalloc.start()
    try:
        stored = store.put_file(path, name, "audio/wav", {"account": "shop"})
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert stored.size == size
    assert stored.etag.endswith('-3"')  # a multipart ETag: "<md5 of part md5s>-<parts>"
    assert peak < 4 * MB, "peak %d bytes while uploading 17 MB" % peak
    body = admin.get_object(Bucket=BUCKET, Key=name)["Body"]
    digest = hashlib.sha256()
    for chunk in body.iter_chunks(MB):
        digest.update(chunk)
    assert digest.hexdigest() == expected


def test_given_missing_file_when_put_file_then_recording_not_found_and_nothing_stored(store, admin, tmp_path):
    name = new_name()
    with pytest.raises(RecordingNotFound, match="missing.wav"):
        store.put_file(tmp_path / "missing.wav", name, "audio/wav", {})
    with pytest.raises(RecordingNotFound):
        store.put_file(tmp_path, name, "audio/wav", {})  # a directory
    assert admin.list_objects_v2(Bucket=BUCKET, Prefix=name)["KeyCount"] == 0


def test_given_unreadable_file_when_put_file_then_recording_not_found_without_contacting_s3(tmp_path):
    # Pointed at a closed port: StorageUnavailable would mean S3 was contacted first.
    store = make_store("http://127.0.0.1:%d" % free_port())
    with pytest.raises(RecordingNotFound):
        store.put_file(tmp_path / "missing.wav", new_name(), "audio/wav", {})
    if os.geteuid() != 0:  # root reads anything
        path = tmp_path / "secret.wav"
        path.write_bytes(b"RIFF")
        path.chmod(0)
        with pytest.raises(RecordingNotFound):
            store.put_file(path, new_name(), "audio/wav", {})


def test_given_prefix_when_put_file_then_key_below_prefix(moto, admin, wav_file):
    name = new_name()
    for prefix in ("recs", "/recs/"):
        stored = make_store(moto.endpoint, prefix=prefix).put_file(wav_file, name, "audio/wav", {})
        assert stored.key == name
    assert admin.head_object(Bucket=BUCKET, Key="recs/" + name)["ContentLength"] == wav_file.stat().st_size
    assert make_store(moto.endpoint, prefix="recs").head(name).key == name
    assert b"".join(make_store(moto.endpoint, prefix="recs/").read(name, 0, 3)) == b"RIFF"
    with pytest.raises(RecordingNotFound):
        make_store(moto.endpoint).head(name)


def test_given_store_reports_other_size_when_put_file_then_storage_unavailable(store, wav_file):
    def lie_about_size(parsed, **kwargs):
        parsed["ContentLength"] += 1

    store._client.meta.events.register("after-call.s3.HeadObject", lie_about_size)
    with pytest.raises(StorageUnavailable, match="bytes"):
        store.put_file(wav_file, new_name(), "audio/wav", {})


def test_given_missing_bucket_when_check_then_storage_unavailable_naming_bucket(moto, admin, wav_file, caplog):
    store = make_store(moto.endpoint, bucket="no-such-bucket-fs-crm")
    caplog.set_level(logging.ERROR, logger="recordings.s3")
    name = new_name()

    with pytest.raises(StorageUnavailable, match="no-such-bucket-fs-crm") as checked:
        store.check()
    # HEAD has no error body, so a 404 must not pass for a missing recording.
    with pytest.raises(StorageUnavailable, match="no-such-bucket-fs-crm") as headed:
        store.head(name)
    with pytest.raises(StorageUnavailable, match="no-such-bucket-fs-crm") as read:
        store.read(name, 0, 9)
    with pytest.raises(StorageUnavailable, match="no-such-bucket-fs-crm") as put:
        store.put_file(wav_file, name, "audio/wav", {})

    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) >= 4 and all("no-such-bucket-fs-crm" in r.getMessage() for r in errors)
    assert any(name in r.getMessage() for r in errors)
    assert_no_secret(caplog, checked.value, headed.value, read.value, put.value)


def test_given_existing_bucket_when_check_then_passes(store):
    store.check()


# -- the store down, hung, or answering errors --


@pytest.mark.parametrize("operation", ["put_file", "head", "read", "open", "check"])
def test_given_store_down_when_operation_then_storage_unavailable_quickly(operation, wav_file, caplog):
    store = make_store("http://127.0.0.1:%d" % free_port())
    calls = {
        "put_file": lambda: store.put_file(wav_file, new_name(), "audio/wav", {"account": "shop"}),
        "head": lambda: store.head(new_name()),
        "read": lambda: store.read(new_name(), 0, 9),
        "open": lambda: store.open(new_name()),
        "check": store.check,
    }
    started = time.monotonic()
    with pytest.raises(StorageUnavailable) as raised:
        calls[operation]()
    assert_quick(started)
    assert BUCKET in str(raised.value)
    assert_no_secret(caplog, raised.value)


def test_given_store_down_then_back_when_check_then_recovers_with_same_store(tmp_path, wav_file):
    port = free_port()
    store = make_store("http://127.0.0.1:%d" % port)
    with pytest.raises(StorageUnavailable):
        store.check()

    server = MotoProcess(tmp_path / "moto-again.log", port=port)
    try:
        admin_client(server.endpoint).create_bucket(Bucket=BUCKET)
        store.check()
        name = new_name()
        assert store.put_file(wav_file, name, "audio/wav", {}).size == wav_file.stat().st_size
    finally:
        server.stop()

    with pytest.raises(StorageUnavailable):
        store.head(name)


class RawServer:
    """Accepts connections on a loopback port and answers each request with the same canned bytes;
    with no answer at all it is a store that accepts connections and then hangs."""

    def __init__(self, answer: bytes | None):
        self.answer = answer
        self.requests: list[bytes] = []
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(16)
        self.endpoint = "http://127.0.0.1:%d" % self._sock.getsockname()[1]
        self._thread = None
        if answer is not None:
            self._thread = threading.Thread(target=self._serve, daemon=True)
            self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            with conn:
                request = b""
                while b"\r\n\r\n" not in request:
                    data = conn.recv(65536)
                    if not data:
                        break
                    request += data
                self.requests.append(request)
                conn.sendall(self.answer)

    def stop(self) -> None:
        self._sock.close()
        if self._thread is not None:
            self._thread.join(timeout=5)


@pytest.fixture
def raw_server():
    servers = []

    def start(answer: bytes | None) -> RawServer:
        servers.append(RawServer(answer))
        return servers[-1]

    yield start
    for server in servers:
        server.stop()


def http_answer(status: str, body: bytes = b"", content_length: int | None = None, **headers: str) -> bytes:
    length = len(body) if content_length is None else content_length
    lines = ["HTTP/1.1 %s" % status, "Content-Length: %d" % length, "Connection: close"]
    lines += ["%s: %s" % (name.replace("_", "-"), value) for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii") + body


def s3_error(status: str, code: str) -> bytes:
    body = ("<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>%s</Code><Message>canned %s</Message>"
            "<RequestId>r1</RequestId></Error>" % (code, code)).encode("ascii")
    return http_answer(status, body, Content_Type="application/xml")


def test_given_hung_store_when_head_or_read_then_storage_unavailable_after_read_timeout(raw_server):
    server = raw_server(None)
    store = make_store(server.endpoint, read_timeout=0.3)
    for call in (lambda: store.head(new_name()), lambda: store.read(new_name(), 0, 9), store.check):
        started = time.monotonic()
        with pytest.raises(StorageUnavailable, match="(?i)timeout"):
            call()
        assert_quick(started, 2.0)


@pytest.mark.parametrize("status, code, logged", [
    ("503 Service Unavailable", "SlowDown", False),
    ("500 Internal Server Error", "InternalError", False),
    ("429 Too Many Requests", "TooManyRequests", False),
    ("403 Forbidden", "AccessDenied", True),
    ("403 Forbidden", "SignatureDoesNotMatch", True),
])
def test_given_error_answer_when_read_then_storage_unavailable_and_operator_problems_logged(
        raw_server, caplog, status, code, logged):
    server = raw_server(s3_error(status, code))
    store = make_store(server.endpoint)
    caplog.set_level(logging.ERROR, logger="recordings.s3")
    name = new_name()

    with pytest.raises(StorageUnavailable, match=code) as raised:
        store.read(name, 0, 9)

    assert len(server.requests) == 1  # max_attempts=1: no retry
    assert server.requests[0].startswith(b"GET /%s/%s" % (BUCKET.encode(), name.encode()))
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    if logged:
        assert len(errors) == 1 and BUCKET in errors[0] and name in errors[0] and code in errors[0]
    else:
        assert errors == []
    assert_no_secret(caplog, raised.value)


def test_given_max_attempts_2_when_store_throttles_then_one_retry_then_storage_unavailable(raw_server):
    # max_attempts counts the first try; botocore's own "max_attempts" key would count only retries.
    server = raw_server(s3_error("503 Service Unavailable", "SlowDown"))
    with pytest.raises(StorageUnavailable, match="SlowDown"):
        make_store(server.endpoint, max_attempts=2).read(new_name(), 0, 9)
    assert len(server.requests) == 2


def test_given_forbidden_head_when_head_then_storage_unavailable_not_missing_recording(raw_server):
    server = raw_server(http_answer("403 Forbidden"))
    with pytest.raises(StorageUnavailable, match="403"):
        make_store(server.endpoint).head(new_name())


def test_given_body_breaks_off_when_reading_then_chunks_then_storage_unavailable(raw_server):
    # Headers promise 1000 bytes, the connection closes after 300.
    server = raw_server(http_answer("206 Partial Content", b"x" * 300, content_length=1000,
                                   Content_Range="bytes 0-999/1000", Content_Type="audio/wav", ETag='"abc"'))
    chunks = make_store(server.endpoint).read(new_name(), 0, 999, chunk_size=100)
    received = []
    with pytest.raises(StorageUnavailable, match="broke off"):
        for chunk in chunks:
            received.append(chunk)
    assert b"".join(received) == b"x" * 300
    assert list(chunks) == []  # closed: nothing more, no second error


def test_given_shorter_object_than_range_when_read_then_storage_unavailable_before_any_chunk(store, tmp_path):
    path = tmp_path / "short.wav"
    path.write_bytes(b"RIFF" + bytes(96))
    name = new_name()
    store.put_file(path, name, "audio/wav", {})
    with pytest.raises(StorageUnavailable, match="not 200"):
        store.read(name, 0, 199)  # sized from a stale head(): only 100 bytes exist



def test_given_http_proxy_in_environment_when_read_then_the_read_goes_through_it(raw_server, monkeypatch):
    # As botocore does for its own requests: HTTP_PROXY is honoured, NO_PROXY can exempt a host.
    proxy = raw_server(http_answer("206 Partial Content", b"0123456789", Content_Range="bytes 0-9/100",
                                   Content_Type="audio/wav", ETag='"abc"'))
    monkeypatch.setenv("HTTP_PROXY", proxy.endpoint)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    name = new_name()
    store = make_store("http://s3.example.invalid:9000")

    assert b"".join(store.read(name, 0, 9)) == b"0123456789"
    assert proxy.requests[0].startswith(b"GET http://s3.example.invalid:9000/%s/%s?" % (BUCKET.encode(),
                                                                                      name.encode()))
    monkeypatch.setenv("NO_PROXY", "s3.example.invalid")
    with pytest.raises(StorageUnavailable):
        make_store("http://s3.example.invalid:9000").read(name, 0, 9)  # straight to a host that does not exist
    assert len(proxy.requests) == 1

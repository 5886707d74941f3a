"""The playback app through a real gevent WSGI server on port 0, exercised with requests."""

import datetime as dt
import email.utils
import hashlib
import logging
import tracemalloc
from pathlib import Path

import gevent.pywsgi
import pytest
import requests
from audio import write_wav

from fs_crm.polling import wait_for
from recordings.base import RecordingNotFound, StorageUnavailable, StoredObject
from recordings.local import LocalStore
from recordings.playback import CHUNK_BUDGET, MAX_CHUNK, MIN_CHUNK, ChunkBudget, make_app
from recordings.tokens import TokenCodec, recording_name

SECRET = b"test-secret-0123456789abcdef"
CLIENT_IDS = {"shop": "shop-client-id-7f3a9c", "other": "other-client-id-21b8"}
CALL_ID = "6a1f0b3c-2d4e-4f50-9a8b-7c6d5e4f3a2b"
NAME = recording_name("shop", CALL_ID, dt.date(2024, 5, 17), "wav")
CAPTURED_WAV = Path(__file__).resolve().parent.parent / "fs_crm/sim/captures/pbx/in_answered_ringgroup.recording.wav"


class SpyStore:
    """A LocalStore that remembers which keys the app asked for."""

    def __init__(self, inner):
        self.inner = inner
        self.calls = []

    def put_file(self, path, key, content_type, metadata):
        return self.inner.put_file(path, key, content_type, metadata)

    def head(self, key):
        self.calls.append(("head", key))
        return self.inner.head(key)

    def read(self, key, start, end, chunk_size=64 * 1024):
        self.calls.append(("read", key, start, end))
        return self.inner.read(key, start, end, chunk_size)

    def open(self, key, chunk_size=64 * 1024):
        self.calls.append(("open", key))
        return self.inner.open(key, chunk_size)

    def check(self):
        self.inner.check()


class BrokenStore:
    """Every call fails with the given exception."""

    def __init__(self, exc):
        self.exc = exc

    def put_file(self, path, key, content_type, metadata):
        raise self.exc

    def head(self, key):
        raise self.exc

    def read(self, key, start, end, chunk_size=64 * 1024):
        raise self.exc

    def open(self, key, chunk_size=64 * 1024):
        raise self.exc

    def check(self):
        raise self.exc


class LazilyFailingStore:
    """head works; read returns a generator that fails on the first chunk (as a remote store may)."""

    def head(self, key):
        return StoredObject(key, 10, "audio/wav", '"x"', dt.datetime(2024, 5, 17, tzinfo=dt.timezone.utc))

    def read(self, key, start, end, chunk_size=64 * 1024):
        raise StorageUnavailable("bucket went away")
        yield b""  # pragma: no cover - makes this a generator

    def open(self, key, chunk_size=64 * 1024):
        return self.head(key), self.read(key, 0, 9, chunk_size)

    def put_file(self, path, key, content_type, metadata):
        raise NotImplementedError

    def check(self):
        pass


@pytest.fixture
def serve():
    servers = []

    def start(store, client_ids=CLIENT_IDS, budget=None):
        server = gevent.pywsgi.WSGIServer(("127.0.0.1", 0), make_app(store, TokenCodec(SECRET), client_ids, budget),
                                          log=None)
        server.start()
        servers.append(server)
        return "http://127.0.0.1:%d" % server.server_port

    yield start
    for server in servers:
        server.stop(timeout=1)


@pytest.fixture
def wav(tmp_path):
    if CAPTURED_WAV.is_file():
        return CAPTURED_WAV
    return write_wav(tmp_path / "recording.wav", seconds=2)


@pytest.fixture
def store(tmp_path, wav):
    local = LocalStore(tmp_path / "recordings")
    local.put_file(wav, NAME, "audio/wav", {"call": CALL_ID})
    return SpyStore(local)


@pytest.fixture
def base(serve, store):
    return serve(store)


@pytest.fixture
def token():
    return TokenCodec(SECRET).make(NAME)


@pytest.fixture
def url(base, token):
    return "%s/records/%s" % (base, token)


def get(url, client_id=CLIENT_IDS["shop"], headers=None, **params):
    if client_id is not None:
        params["clientId"] = client_id
    return requests.get(url, params=params, headers=headers or {}, timeout=10)


def assert_plain_error(response, status):
    assert response.status_code == status
    assert response.headers["Content-Type"] == "text/plain; charset=utf-8"
    assert len(response.text) < 100
    assert "Traceback" not in response.text
    for secret in CLIENT_IDS.values():
        assert secret not in response.text


# -- success ---------------------------------------------------------------------------------------

def test_given_valid_token_and_client_id_then_200_with_the_recording(url, wav, store):
    response = get(url)

    assert response.status_code == 200
    assert response.content == wav.read_bytes()
    assert response.headers["Content-Type"] == "audio/wav"
    assert response.headers["Content-Length"] == str(wav.stat().st_size)
    assert response.headers["Accept-Ranges"] == "bytes"
    assert response.headers["ETag"] == store.inner.head(NAME).etag
    assert response.headers["Cache-Control"] == "private, max-age=3600"
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    last_modified = email.utils.parsedate_to_datetime(response.headers["Last-Modified"])
    assert abs(last_modified - store.inner.head(NAME).last_modified) < dt.timedelta(seconds=1)
    assert "Content-Disposition" not in response.headers
    # A player starting: one request to the store gives headers and bytes.
    assert store.calls == [("open", NAME)]


def test_when_head_then_same_headers_no_body_and_no_read(url, wav, store):
    response = requests.head(url, params={"clientId": CLIENT_IDS["shop"]}, timeout=10)

    assert response.status_code == 200
    assert response.content == b""
    assert response.headers["Content-Type"] == "audio/wav"
    assert response.headers["Content-Length"] == str(wav.stat().st_size)
    assert response.headers["Accept-Ranges"] == "bytes"
    assert "ETag" in response.headers and "Last-Modified" in response.headers
    assert store.calls == [("head", NAME)]


def test_given_download_1_then_attachment_named_from_the_token(url):
    response = get(url, download="1", filename="../../evil.sh")

    assert response.status_code == 200
    assert response.headers["Content-Disposition"] == 'attachment; filename="call-%s.wav"' % CALL_ID


def test_given_download_other_than_1_then_inline(url):
    assert "Content-Disposition" not in get(url, download="yes").headers


def test_given_other_query_params_then_ignored_and_only_the_token_names_the_key(url, store):
    response = get(url, key="../../etc/passwd", name="other/2024/01/01/x.wav", account="other")

    assert response.status_code == 200
    assert {call[1] for call in store.calls} == {NAME}


def test_given_if_none_match_with_the_etag_then_304(url):
    etag = get(url).headers["ETag"]

    for header in (etag, 'W/%s' % etag, '"nope", %s' % etag, "*"):
        response = get(url, headers={"If-None-Match": header})
        assert response.status_code == 304
        assert response.content == b""
        assert response.headers["ETag"] == etag


def test_given_if_none_match_with_another_etag_then_200(url):
    assert get(url, headers={"If-None-Match": '"something-else"'}).status_code == 200


# -- ranges ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("header,start,end", [
    ("bytes=0-99", 0, 99),
    ("bytes=44-44", 44, 44),
    ("bytes=1000-", 1000, None),
    ("bytes=-500", -500, None),
    ("bytes=100-99999999", 100, None),
    ("bytes=-99999999", 0, None),
    ("BYTES = 10 - 20", 10, 20),
])
def test_given_a_single_range_then_206_with_exact_bytes(url, wav, header, start, end):
    data = wav.read_bytes()
    size = len(data)
    expected = data[start:] if end is None else data[start:end + 1]
    first = start if start >= 0 else size + start

    response = get(url, headers={"Range": header})

    assert response.status_code == 206
    assert response.content == expected
    assert response.headers["Content-Length"] == str(len(expected))
    assert response.headers["Content-Range"] == "bytes %d-%d/%d" % (first, first + len(expected) - 1, size)
    assert response.headers["Content-Type"] == "audio/wav"


@pytest.mark.parametrize("header", ["bytes={size}-", "bytes={size}-{bigger}", "bytes=-0"])
def test_given_an_unsatisfiable_range_then_416(url, wav, header):
    size = wav.stat().st_size

    response = get(url, headers={"Range": header.format(size=size, bigger=size + 10)})

    assert_plain_error(response, 416)
    assert response.headers["Content-Range"] == "bytes */%d" % size


@pytest.mark.parametrize("header", [
    "bytes=0-1,5-6", "bytes=0-1, -5", "bytes=5-1", "items=0-1", "bytes=abc", "bytes=-", "bytes=", "0-1",
    "bytes=" + "9" * 5000,
])
def test_given_a_multi_or_invalid_range_then_ignored_and_200(url, wav, header):
    response = get(url, headers={"Range": header})

    assert response.status_code == 200
    assert response.content == wav.read_bytes()


def test_given_if_range_then_range_honoured_only_when_it_matches(url, wav):
    first = get(url)
    etag, last_modified = first.headers["ETag"], first.headers["Last-Modified"]

    assert get(url, headers={"Range": "bytes=0-9", "If-Range": etag}).status_code == 206
    assert get(url, headers={"Range": "bytes=0-9", "If-Range": last_modified}).status_code == 206
    stale = get(url, headers={"Range": "bytes=0-9", "If-Range": '"stale"'})
    assert stale.status_code == 200
    assert stale.content == wav.read_bytes()
    unsatisfiable_but_stale = get(url, headers={"Range": "bytes=99999999-", "If-Range": '"stale"'})
    assert unsatisfiable_but_stale.status_code == 200


# -- who may listen --------------------------------------------------------------------------------

@pytest.mark.parametrize("client_id", [
    "wrong", "", CLIENT_IDS["other"], CLIENT_IDS["shop"] + "x", CLIENT_IDS["shop"][:-1],
    CLIENT_IDS["shop"].upper(), "x" * 300, CLIENT_IDS["shop"] + "\n", "shop\x00client", "\u00e9\u00e9",
])
def test_given_a_wrong_client_id_then_403(url, client_id, store):
    response = get(url, client_id=client_id)

    assert_plain_error(response, 403)
    assert store.calls == []


def test_given_no_client_id_then_403(url, store):
    assert_plain_error(get(url, client_id=None), 403)
    assert store.calls == []


def test_given_client_id_twice_then_403(url):
    query = "clientId=%s&clientId=%s" % (CLIENT_IDS["shop"], CLIENT_IDS["shop"])
    assert_plain_error(requests.get(url + "?" + query, timeout=10), 403)


def test_given_invalid_utf8_client_id_then_403(url):
    assert_plain_error(requests.get(url + "?clientId=%FF%FE", timeout=10), 403)


def test_given_another_accounts_valid_token_with_its_own_client_id_then_served(serve, tmp_path, wav):
    other_name = recording_name("other", "abc-123", dt.date(2024, 6, 1), "wav")
    local = LocalStore(tmp_path / "store2")
    local.put_file(wav, other_name, "audio/wav", {})
    base = serve(local)
    other_url = "%s/records/%s" % (base, TokenCodec(SECRET).make(other_name))

    assert get(other_url, client_id=CLIENT_IDS["other"]).status_code == 200
    assert_plain_error(get(other_url, client_id=CLIENT_IDS["shop"]), 403)


# -- which recordings exist ------------------------------------------------------------------------

def test_given_a_malformed_token_then_404(base, token, store):
    for bad in ("x", "not-a-token", token[:-1], token + "A", token.replace(".", ""), token.split(".")[0]):
        assert_plain_error(get("%s/records/%s" % (base, bad)), 404)
    assert store.calls == []


def test_given_a_token_signed_with_another_secret_then_404(base, store):
    forged = TokenCodec(b"another-secret-of-32-bytes-len!!").make(NAME)

    assert_plain_error(get("%s/records/%s" % (base, forged)), 404)
    assert store.calls == []


@pytest.mark.parametrize("path", [
    "..%2F..%2Fetc%2Fpasswd",
    "%2e%2e%2f%2e%2e%2fetc%2fpasswd",
    "..",
    "%2e%2e",
    "....%2F%2F",
    "..%5C..%5Cetc%5Cpasswd",
    "Li4vLi4vZXRjL3Bhc3N3ZC53YXY.AAAAAAAAAAAAAAAAAAAAAAAAAAA",  # base64 of ../../etc/passwd.wav
    "%00",
    "token%00.wav",
])
def test_given_a_traversal_looking_token_then_404_and_storage_untouched(base, store, path):
    response = requests.get("%s/records/%s" % (base, path), params={"clientId": CLIENT_IDS["shop"]}, timeout=10)

    assert_plain_error(response, 404)
    assert "passwd" not in response.text
    assert store.calls == []


def test_given_a_10kB_token_then_404(base, store, monkeypatch):
    # pywsgi itself refuses request lines over 8 kB (414); lift that so the app sees the token.
    monkeypatch.setattr(gevent.pywsgi, "MAX_REQUEST_LINE", 64 * 1024)

    assert_plain_error(get("%s/records/%s" % (base, "A" * 10_000)), 404)
    assert store.calls == []


def test_given_a_10kB_token_and_the_stock_server_limit_then_refused_without_crash(base):
    response = get("%s/records/%s" % (base, "A" * 10_000))

    assert response.status_code == 414
    assert get("%s/records/%s" % (base, "A" * 5_000)).status_code == 404


def test_given_a_valid_token_for_an_unknown_account_then_404(base, store):
    ghost = TokenCodec(SECRET).make(recording_name("ghost", CALL_ID, dt.date(2024, 5, 17), "wav"))

    assert_plain_error(get("%s/records/%s" % (base, ghost)), 404)
    assert store.calls == []


def test_given_a_deleted_object_then_404(url, store):
    (store.inner.directory / NAME).unlink()

    assert_plain_error(get(url), 404)


def test_given_an_invalid_token_and_wrong_client_id_then_404_first(base):
    assert_plain_error(get("%s/records/nonsense" % base, client_id="wrong"), 404)


def test_given_other_paths_or_methods_then_plain_errors(base, url):
    assert_plain_error(requests.get(base + "/records/", timeout=10), 404)
    assert_plain_error(requests.get(base + "/healthz", timeout=10), 404)
    response = requests.post(url, params={"clientId": CLIENT_IDS["shop"]}, timeout=10)
    assert_plain_error(response, 405)
    assert "GET" in response.headers["Allow"]


# -- failures --------------------------------------------------------------------------------------

def test_given_storage_unavailable_then_503_retry_after(serve, token):
    base = serve(BrokenStore(StorageUnavailable("bucket down")))

    response = get("%s/records/%s" % (base, token))

    assert_plain_error(response, 503)
    assert response.headers["Retry-After"] == "30"
    assert "bucket" not in response.text


def test_given_storage_failing_on_first_chunk_then_503(serve, token):
    base = serve(LazilyFailingStore())

    response = get("%s/records/%s" % (base, token))

    assert_plain_error(response, 503)


def test_given_store_not_finding_then_404(serve, token):
    assert_plain_error(get("%s/records/%s" % (serve(BrokenStore(RecordingNotFound("gone"))), token)), 404)


def test_given_an_unexpected_exception_then_plain_500_and_logged(serve, token, caplog):
    base = serve(BrokenStore(RuntimeError("boom at /internal/path")))

    with caplog.at_level(logging.INFO, logger="recordings.playback"):
        response = get("%s/records/%s" % (base, token))

    assert_plain_error(response, 500)
    assert response.text == "Internal server error\n"
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors and errors[0].exc_info is not None


def test_logs_name_account_and_call_but_never_client_id_or_token(url, token, caplog):
    with caplog.at_level(logging.DEBUG):
        assert get(url).status_code == 200
        assert get(url, client_id="wrong-" + CLIENT_IDS["other"]).status_code == 403

    ours = [r for r in caplog.records if r.name.startswith("recordings.")]  # not the test client's urllib3
    served = [r.getMessage() for r in ours if r.levelno == logging.INFO]
    assert len(served) == 1 and "shop" in served[0] and CALL_ID in served[0]
    for record in ours:
        for secret in (*CLIENT_IDS.values(), token):
            assert secret not in record.getMessage()


# -- streaming -------------------------------------------------------------------------------------

def test_given_a_10MB_object_then_streamed_without_holding_it_in_memory(serve, tmp_path):
    size = 10 * 1024 * 1024
    source = tmp_path / "big.wav"
    expected = hashlib.sha256()
    with open(source, "wb") as out:
        for i in range(size // 65536):
            block = bytes([i % 256]) * 65536
            expected.update(block)
            out.write(block)
    local = LocalStore(tmp_path / "big-store")
    local.put_file(source, NAME, "audio/wav", {})
    base = serve(local)
    url = "%s/records/%s" % (base, TokenCodec(SECRET).make(NAME))

    tracemalloc.start()
    try:
        received = hashlib.sha256()
        total = 0
        with requests.get(url, params={"clientId": CLIENT_IDS["shop"]}, stream=True, timeout=30) as response:
            assert response.status_code == 200
            assert response.headers["Content-Length"] == str(size)
            for chunk in response.iter_content(64 * 1024):
                received.update(chunk)
                total += len(chunk)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()

    assert total == size
    assert received.digest() == expected.digest()
    print("tracemalloc peak while serving 10 MB: %d bytes" % peak)
    # A chunk at a time: the app's chunk, and the client's copies of it (same process here).
    assert peak < 4 * MAX_CHUNK < size / 2, "peak %d bytes while serving 10 MB" % peak


def test_given_an_empty_object_then_200_empty_and_any_range_416(serve, tmp_path):
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    local = LocalStore(tmp_path / "empty-store")
    local.put_file(empty, NAME, "audio/wav", {})
    url = "%s/records/%s" % (serve(local), TokenCodec(SECRET).make(NAME))

    response = get(url)
    assert response.status_code == 200 and response.content == b""
    assert response.headers["Content-Length"] == "0"
    for header in ("bytes=0-", "bytes=-1"):
        ranged = get(url, headers={"Range": header})
        assert ranged.status_code == 416
        assert ranged.headers["Content-Range"] == "bytes */0"


def test_given_budget_for_two_big_chunks_when_streams_open_then_third_gets_small_and_all_comes_back():
    budget = ChunkBudget(2 * MAX_CHUNK + MAX_CHUNK // 2)
    sizes = [budget.take() for _ in range(4)]
    assert sizes == [MAX_CHUNK, MAX_CHUNK, MAX_CHUNK // 2, MIN_CHUNK]
    for size in sizes:
        budget.give(size)
    assert budget.free == 2 * MAX_CHUNK + MAX_CHUNK // 2


def test_given_every_kind_of_answer_when_done_then_the_chunk_budget_is_whole_again(serve, store, tmp_path):
    # Full, ranged, HEAD, conditional, refused, missing, and a player that goes away mid-body.
    big = tmp_path / "big.wav"
    big.write_bytes(bytes(range(256)) * (12 * 1024))  # 3 MiB: several chunks
    big_name = recording_name("shop", "big-call", dt.date(2024, 5, 17), "wav")
    store.put_file(big, big_name, "audio/wav", {})
    budget = ChunkBudget(CHUNK_BUDGET)
    base = serve(store, budget=budget)
    url = "%s/records/%s" % (base, TokenCodec(SECRET).make(NAME))
    big_url = "%s/records/%s" % (base, TokenCodec(SECRET).make(big_name))
    ok = {"clientId": CLIENT_IDS["shop"]}
    with requests.Session() as session:
        assert session.get(url, params=ok, timeout=10).status_code == 200
        assert session.get(url, params=ok, headers={"Range": "bytes=0-99"}, timeout=10).status_code == 206
        assert session.head(url, params=ok, timeout=10).status_code == 200
        etag = session.head(url, params=ok, timeout=10).headers["ETag"]
        assert session.get(url, params=ok, headers={"If-None-Match": etag}, timeout=10).status_code == 304
        assert session.get(url, params={"clientId": "wrong"}, timeout=10).status_code == 403
        assert session.get(url + "x", params=ok, timeout=10).status_code == 404
    with requests.get(big_url, params=ok, stream=True, timeout=10) as response:
        assert len(next(response.iter_content(1024))) == 1024  # then hang up with most of it unsent
    assert wait_for(lambda: budget.free == CHUNK_BUDGET, timeout=5), budget.free

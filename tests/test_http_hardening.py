"""fs-crm's HTTP server through raw sockets: slow or idle clients are cut off, and no log line or
stderr output ever holds a request line or query string (recording URLs carry clientId there)."""

import logging
import select
import socket
import struct
import time

import bottle
import pytest

from fs_crm.config import HttpConfig
from fs_crm.polling import wait_for
from fs_crm.web.server import HttpServer, build_app, redact

SECRET = "SECRET-client-id-5d1e"


def make_part() -> bottle.Bottle:
    part = bottle.Bottle()

    @part.get("/recordings/<name>")
    def recording(name):
        return "ok %s\n" % name

    @part.get("/boom")
    def boom():
        # An app bug whose message quotes the URL: Bottle writes the traceback to wsgi.errors.
        raise RuntimeError("cannot answer %s" % bottle.request.url)

    return part


def start(header_timeout=5.0, idle_timeout=5.0) -> HttpServer:
    server = HttpServer(HttpConfig(listen_host="127.0.0.1", listen_port=0),
                        build_app(lambda: (True, {}), make_part()),
                        header_timeout=header_timeout, idle_timeout=idle_timeout)
    server.start()
    return server


@pytest.fixture
def server():
    server = start(header_timeout=0.5, idle_timeout=0.5)
    yield server
    server.stop()


@pytest.fixture
def logs(caplog, capfd):
    """Every log record and everything written to stdout/stderr (gevent prints some errors there)."""
    caplog.set_level(logging.DEBUG)

    def text() -> str:
        out, err = capfd.readouterr()
        return "\n".join([caplog.text, *(r.getMessage() for r in caplog.records), out, err])

    return text


def connect(server) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.port), timeout=5)


def read_until_closed(sock: socket.socket, limit: float = 5.0) -> bytes:
    """All the server sends until it closes the connection; fails if it is still open after `limit`."""
    sock.settimeout(limit)
    data = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk


def exchange(server, request: bytes) -> bytes:
    with connect(server) as sock:
        sock.sendall(request)
        return read_until_closed(sock)


def status_of(response: bytes) -> str:
    return response.split(b"\r\n", 1)[0].decode("latin-1")


q = "?clientId=" + SECRET
REQUESTS = [
    ("bad version", "GET /recordings/x%s HTTP/9.9\r\n\r\n" % q, "400"),
    ("version without minor", "GET /recordings/x%s HTTP/9\r\n\r\n" % q, "400"),  # IndexError inside gevent
    ("version not numeric", "GET /recordings/x%s HTTP/x.y\r\n\r\n" % q, "400"),
    ("unknown method, no version", "FOO /recordings/x%s\r\n\r\n" % q, "400"),
    ("four words", "GET /recordings/x%s HTTP/1.1 extra\r\n\r\n" % q, "400"),
    ("bad content-length", "GET /recordings/x%s HTTP/1.1\r\nContent-Length: zz\r\n\r\n" % q, "400"),
    ("negative content-length", "GET /recordings/x%s HTTP/1.1\r\nContent-Length: -5\r\n\r\n" % q, "400"),
    ("line too long", "GET /recordings/x%s%s HTTP/1.1\r\n\r\n" % (q, "A" * 9000), "414"),
    ("garbage", "\x16\x03\x01\x02garbage%s\x00\xff\r\n\r\n" % q, "400"),
    ("app error quoting its URL", "GET /boom%s HTTP/1.1\r\nConnection: close\r\n\r\n" % q, "500"),
    ("good request", "GET /recordings/x%s HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n" % q, "200"),
    ("HTTP/1.0", "GET /recordings/x%s HTTP/1.0\r\n\r\n" % q, "200"),
]


@pytest.mark.parametrize("request_bytes,status", [(r, s) for _, r, s in REQUESTS], ids=[n for n, _, _ in REQUESTS])
def test_given_any_request_when_answered_then_query_string_in_no_log_and_not_on_stderr(server, logs, request_bytes,
                                                                                    status):
    response = exchange(server, request_bytes.encode("latin-1"))

    assert status in status_of(response)
    text = logs()
    assert SECRET not in text
    assert "clientId" not in text
    assert "Traceback" not in text or status == "500"  # only the app's own error is logged with its traceback


def test_given_malformed_request_when_rejected_then_one_warning_naming_client_and_method_only(server, caplog):
    caplog.set_level(logging.DEBUG, logger="fs_crm.web.server")
    exchange(server, ("GET /recordings/x%s HTTP/9.9\r\n\r\n" % q).encode())

    [warning] = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert warning.getMessage() == "rejected a malformed HTTP request from 127.0.0.1 (method GET, InvalidClientRequest)"


def test_given_a_good_then_a_bad_request_on_one_connection_then_no_secret_and_old_method_not_reused(server, logs,
                                                                                                caplog):
    with connect(server) as sock:
        sock.sendall(("GET /recordings/a%s HTTP/1.1\r\nHost: a\r\n\r\n" % q).encode())
        assert sock.recv(65536).startswith(b"HTTP/1.1 200")
        sock.sendall(("garbage%s\r\n\r\n" % q).encode())
        assert b"400 Bad Request" in read_until_closed(sock)
    assert SECRET not in logs()
    assert "method unknown-method" in caplog.text


def test_given_app_error_when_logged_then_traceback_kept_but_query_removed(server, caplog, capfd):
    caplog.set_level(logging.DEBUG)
    exchange(server, ("GET /boom%s HTTP/1.1\r\nConnection: close\r\n\r\n" % q).encode())

    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert any("RuntimeError: cannot answer http://" in e and "/boom?[query removed]" in e for e in errors), errors
    assert SECRET not in "".join(capfd.readouterr())


def test_given_client_resets_before_the_400_is_written_then_debug_line_and_nothing_on_stderr(server, caplog, capfd):
    caplog.set_level(logging.DEBUG, logger="fs_crm.web.server")
    sock = connect(server)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close() sends a reset
    sock.sendall(("GET /recordings/x%s HTTP/9.9\r\n\r\n" % q).encode())
    sock.close()

    assert wait_for(lambda: "went away before its answer" in caplog.text, timeout=5)
    err = capfd.readouterr().err
    assert "Traceback" not in err and SECRET not in err


@pytest.mark.parametrize("text,expected", [
    ("GET /x?clientId=abc HTTP/1.1", "GET /x?[query removed] HTTP/1.1"),
    ("raw='GET /x?a=1&clientId=s\\r\\n'", "raw='GET /x?[query removed]'"),
    ('url "http://h/r/t?clientId=s" failed', 'url "http://h/r/t?[query removed]" failed'),
    ("no query here", "no query here"),
])
def test_given_text_when_redacted_then_every_query_string_cut(text, expected):
    assert redact(text) == expected


# --- timeouts -----------------------------------------------------------------------------------

def test_given_client_that_sends_nothing_when_header_timeout_passes_then_server_closes_it(logs):
    server = start(header_timeout=0.3, idle_timeout=30.0)
    try:
        with connect(server) as sock:
            started = time.monotonic()
            assert read_until_closed(sock, limit=5.0) == b""
            assert time.monotonic() - started < 5.0
    finally:
        server.stop()
    assert "no request line within 0.3s" in logs()


def trickle(sock: socket.socket, data: bytes) -> bytes:
    """Send `data` one byte per 10 ms until the server answers or closes; what it sent back."""
    for byte in data:
        readable, _, _ = select.select([sock], [], [], 0.01)
        if readable:
            return read_until_closed(sock)
        sock.sendall(bytes([byte]))
    raise AssertionError("the server was still reading after %d bytes" % len(data))


ENDLESS_HEADER = b"X-Slow: " + b"a" * 10_000  # at one byte per 10 ms, far longer than the deadline


def test_given_request_line_sent_byte_by_byte_when_header_timeout_passes_then_closed(logs):
    server = start(header_timeout=0.3, idle_timeout=30.0)
    try:
        with connect(server) as sock:
            assert trickle(sock, ("GET /recordings/x%s" % q).encode() + b"a" * 10_000) == b""
    finally:
        server.stop()
    text = logs()
    assert "no request line within 0.3s" in text and SECRET not in text


def test_given_headers_sent_byte_by_byte_forever_when_header_timeout_passes_then_408_and_closed(logs):
    server = start(header_timeout=0.3, idle_timeout=30.0)
    try:
        with connect(server) as sock:
            sock.sendall(("GET /recordings/x%s HTTP/1.1\r\n" % q).encode())
            assert trickle(sock, ENDLESS_HEADER).startswith(b"HTTP/1.1 408 Request Timeout\r\n")
    finally:
        server.stop()
    text = logs()
    assert "request headers not complete within 0.3s" in text and SECRET not in text


def test_given_kept_alive_connection_when_idle_past_the_limit_then_server_closes_it(logs):
    server = start(header_timeout=30.0, idle_timeout=0.3)
    try:
        with connect(server) as sock:
            sock.sendall(b"GET /recordings/a HTTP/1.1\r\nHost: a\r\n\r\n")
            first = sock.recv(65536)
            assert first.startswith(b"HTTP/1.1 200") and first.endswith(b"ok a\n")
            assert read_until_closed(sock, limit=5.0) == b""
    finally:
        server.stop()
    assert "closing an idle HTTP connection from 127.0.0.1 after 0.3s" in logs()


def test_given_kept_alive_connection_when_requests_come_within_the_limits_then_each_answered(server):
    with connect(server) as sock:
        for name in ("a", "b", "c"):
            sock.sendall(b"GET /recordings/%s HTTP/1.1\r\nHost: a\r\n\r\n" % name.encode())
            answer = sock.recv(65536)
            assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(b"ok %s\n" % name.encode())
        # Two requests in one packet (pipelining): the second is already buffered, nothing waits.
        sock.sendall(b"GET /recordings/d HTTP/1.1\r\nHost: a\r\n\r\nGET /recordings/e HTTP/1.1\r\nHost: a\r\n"
                     b"Connection: close\r\n\r\n")
        both = read_until_closed(sock)
    assert both.count(b"HTTP/1.1 200") == 2 and both.endswith(b"ok e\n")

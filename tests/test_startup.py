"""Start-up in any weather: `fs-crm check --offline`, one-line start-up errors, systemd's READY=1,
and the shipped systemd unit. Everything runs the `fs-crm` command as an operator would (a subprocess)."""

import os
import shutil
import signal
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from e2e import API_KEY, config_table

from fs_crm import sdnotify
from fs_crm.config import AccountConfig, DeliveryConfig
from fs_crm.crm.client import CrmClient, CrmUnavailable
from fs_crm.sim import free_port
from fs_crm.sim.config import to_toml
from fs_crm.store.outbox import SCHEMA_VERSION, Outbox

REPO = Path(__file__).resolve().parents[1]
UNIT = REPO / "conf" / "fs-crm.service"


ENV = {**{k: v for k, v in os.environ.items() if k != sdnotify.ENV}, "FS_CRM_ACCOUNT_SHOP_API_KEY": API_KEY}


def fs_crm(*args, env_extra=None, timeout=30, cwd=None):
    env = {**ENV, **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "fs_crm", *args], capture_output=True, text=True, env=env,
                          timeout=timeout, cwd=cwd)


def offline_config(tmp_path, state_dir, http_port=0, routing_port=0, storage=None, name="fs-crm.toml"):
    """A complete config whose FreeSWITCH and CRM are nowhere: the offline check must not care."""
    table = {
        "http": {"listen": "127.0.0.1:%d" % http_port, "public_url": "http://127.0.0.1:%d" % http_port},
        "state": {"dir": str(state_dir)},
        "routing": {"listen": "127.0.0.1:%d" % routing_port},
        "freeswitch": {"host": "127.0.0.1", "port": free_port()},
        "accounts": [{"name": "shop", "crm_url": "http://127.0.0.1:%d" % free_port(), "api_key": "unused",
                      "client_id": "client-1", "domain": "pbx.test", "timezone": "Europe/Moscow",
                      "extensions": {"1": "100"}}],
    }
    if storage:
        table["storage"] = storage
    path = tmp_path / name
    path.write_text(to_toml(table))
    return path


def assert_one_line_error(result, *fragments):
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if not line[:4].isdigit()]  # not a log line
    assert len(errors) == 1, result.stderr
    for fragment in fragments:
        assert fragment in errors[0], errors[0]


@pytest.fixture
def listening():
    """A port some other program listens on."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        yield busy.getsockname()[1]


@pytest.fixture
def read_only_dir(tmp_path):
    """A directory nobody may write into: a read-only tmpfs as root (root writes through modes), else
    a directory of mode 0500."""
    path = tmp_path / "ro"
    path.mkdir()
    if os.geteuid() != 0:
        path.chmod(0o500)
        yield path
        path.chmod(0o700)
        return
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(path)], capture_output=True,
                             text=True, timeout=30)
    if mounted.returncode != 0:
        pytest.skip("mount -t tmpfs is not permitted here: %s" % mounted.stderr.strip())
    try:
        yield path
    finally:
        if subprocess.run(["umount", str(path)], capture_output=True, timeout=30).returncode != 0:
            subprocess.run(["umount", "-l", str(path)], capture_output=True, timeout=30)


# --- fs-crm check --offline ------------------------------------------------------------------

def test_given_good_config_and_nothing_reachable_when_check_offline_then_every_line_ok_and_exit_zero(tmp_path):
    state = tmp_path / "var" / "state"
    http_port, routing_port = free_port(), free_port()
    config = offline_config(tmp_path, state, http_port, routing_port,
                            storage={"backend": "local", "directory": str(tmp_path / "rec")})
    result = fs_crm("check", "--offline", "-c", str(config))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines() == [
        "config %s: OK (1 account(s))" % config,
        "[state] dir %s: OK, created (mode 0700)" % state,
        "outbox %s: OK, none yet; it can be created here" % (state / "outbox.sqlite3"),
        "[http] listen 127.0.0.1:%d: OK, free" % http_port,
        "[routing] listen 127.0.0.1:%d: OK, free" % routing_port,
        "recording storage (local %s): OK, writable" % (tmp_path / "rec"),
    ]
    assert sorted(p.name for p in state.iterdir()) == []  # created, and left as it was made


def test_given_existing_outbox_when_check_offline_then_its_queue_is_shown_and_the_file_is_unchanged(tmp_path):
    state = tmp_path / "state"
    outbox = Outbox(state / "outbox.sqlite3")
    outbox.add("shop", "call-1", {"externalId": "call-1"})
    outbox.close()
    before = {p.name: p.read_bytes() for p in state.iterdir()}
    result = fs_crm("check", "--offline", "-c", str(offline_config(tmp_path, state)))
    assert result.returncode == 0, result.stdout + result.stderr
    assert ("outbox %s: OK, schema %d, 1 pending, 0 held, 0 set aside" % (state / "outbox.sqlite3", SCHEMA_VERSION)
            in result.stdout)
    assert {p.name: p.read_bytes() for p in state.iterdir()} == before


def test_given_state_dir_that_cannot_be_created_when_check_offline_then_failed_names_it_and_exit_1(
        tmp_path, read_only_dir):
    state = read_only_dir / "state"
    result = fs_crm("check", "--offline", "-c", str(offline_config(tmp_path, state)))
    assert result.returncode == 1, result.stdout + result.stderr
    line = next(line for line in result.stdout.splitlines() if line.startswith("[state] dir"))
    assert line.startswith("[state] dir %s: FAILED: cannot be created: " % state), line
    assert "outbox" not in result.stdout  # nothing to open in a state dir that is not there
    assert "[http] listen 127.0.0.1:0: OK" in result.stdout  # the other checks still report


def test_given_read_only_state_dir_when_check_offline_then_not_writable(tmp_path, read_only_dir):
    if os.geteuid() != 0:
        pytest.skip("a 0500 directory of our own is made 0700 by fs-crm run: only a read-only mount is unwritable")
    result = fs_crm("check", "--offline", "-c", str(offline_config(tmp_path, read_only_dir)))
    assert result.returncode == 1
    assert "[state] dir %s: FAILED: not writable: Read-only file system" % read_only_dir in result.stdout


def test_given_port_in_use_when_check_offline_then_failed_asks_whether_fs_crm_runs(tmp_path, listening):
    config = offline_config(tmp_path, tmp_path / "state", routing_port=listening)
    result = fs_crm("check", "--offline", "-c", str(config))
    assert result.returncode == 1
    assert ("[routing] listen 127.0.0.1:%d: FAILED: in use (is fs-crm already running?)" % listening
            in result.stdout.splitlines())


def test_given_corrupt_outbox_when_check_offline_then_failed_and_run_says_so_in_one_line(tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    (state / "outbox.sqlite3").write_bytes(b"not a database, whatever its name says" * 10)
    config = offline_config(tmp_path, state)
    checked = fs_crm("check", "--offline", "-c", str(config))
    assert checked.returncode == 1
    assert "outbox %s: FAILED: cannot be opened: file is not a database" % (state / "outbox.sqlite3") in checked.stdout
    assert_one_line_error(fs_crm("run", "-c", str(config)), str(config), "cannot start", "file is not a database")


# --- one-line start-up errors ------------------------------------------------------------------

def test_given_state_dir_that_cannot_be_created_when_run_then_one_line_names_it(tmp_path, read_only_dir):
    state = read_only_dir / "state"
    config = offline_config(tmp_path, state)
    assert_one_line_error(fs_crm("run", "-c", str(config)), "fs-crm: %s: [state] dir %s: " % (config, state))


def test_given_http_port_in_use_when_run_then_one_line_says_which_key_and_address(tmp_path, listening):
    config = offline_config(tmp_path, tmp_path / "state", http_port=listening)
    assert_one_line_error(fs_crm("run", "-c", str(config)),
                          "fs-crm: %s: [http] listen 127.0.0.1:%d: cannot listen: in use (is fs-crm already running?)"
                          % (config, listening))


def test_given_port_taken_when_playback_then_one_line_says_which_address(tmp_path, listening):
    config = offline_config(tmp_path, tmp_path / "state", storage={
        "backend": "local", "directory": str(tmp_path / "rec"), "url_secret": "a-shared-secret-for-all-hosts"})
    assert_one_line_error(fs_crm("playback", "-c", str(config), "--listen", "127.0.0.1:%d" % listening),
                          "fs-crm playback: %s: --listen 127.0.0.1:%d: cannot listen: in use" % (config, listening))


@pytest.fixture
def outbox_config(tmp_path):
    state = tmp_path / "state"
    outbox = Outbox(state / "outbox.sqlite3")
    for n in range(30):
        outbox.add("shop", "call-%d" % n, {"externalId": "call-%d" % n})
        outbox.set_aside(outbox.due("shop")[0].id, "HTTP 400: calls[0][phone] is invalid " + "x" * 200)
    outbox.close()
    return offline_config(tmp_path, state)


def test_given_outbox_piped_into_head_when_head_exits_then_no_traceback(outbox_config):
    result = subprocess.run("%s -m fs_crm outbox -c %s | head -1" % (sys.executable, outbox_config), shell=True,
                            capture_output=True, text=True, timeout=30, env=ENV)
    assert result.stdout == "pending: 0\n"
    assert result.stderr == ""


def test_given_reader_gone_before_output_when_outbox_then_quiet_exit_141(outbox_config):
    proc = subprocess.Popen([sys.executable, "-m", "fs_crm", "outbox", "-c", str(outbox_config)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV)
    proc.stdout.close()  # long before the interpreter has started: every write meets EPIPE
    proc.stdout = None  # (so communicate() reads stderr only)
    _, err = proc.communicate(timeout=30)
    assert err == b""
    assert proc.returncode == 141


def test_given_crm_refusing_connections_when_request_then_the_cause_survives(tmp_path):
    """requests' text puts the cause after ~200 characters of pool and URL; a cut there lost it."""
    account = AccountConfig(name="shop", crm_url="http://127.0.0.1:%d" % free_port(), api_key="k" * 32,
                            client_id="c", code="fs-crm", domain="pbx.test", timezone="Europe/Moscow")
    client = CrmClient(account, DeliveryConfig())
    try:
        with pytest.raises(CrmUnavailable) as caught:
            client.credentials()
    finally:
        client.close()
    assert "Connection refused" in str(caught.value)
    assert "k" * 32 not in str(caught.value)


# --- systemd -------------------------------------------------------------------------------------

@pytest.mark.parametrize("abstract", [True, False])
def test_given_notify_socket_when_notify_then_one_datagram_of_the_fields(abstract):
    name = "fs-crm-test-%s" % uuid.uuid4().hex
    directory = Path("/tmp") / name  # a short path: AF_UNIX names have ~108 bytes
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        if abstract:
            sock.bind("\0" + name)
            env = {sdnotify.ENV: "@" + name}
        else:
            directory.mkdir()
            sock.bind(str(directory / "notify"))
            env = {sdnotify.ENV: str(directory / "notify")}
        try:
            sock.settimeout(5)
            assert sdnotify.notify("READY=1", "STATUS=active", env=env)
            assert sock.recv(4096) == b"READY=1\nSTATUS=active"
        finally:
            shutil.rmtree(directory, ignore_errors=True)


def test_given_no_or_dead_notify_socket_when_notify_then_nothing_happens():
    assert not sdnotify.notify("READY=1", env={})
    assert not sdnotify.notify("READY=1", env={sdnotify.ENV: "@fs-crm-test-nobody-%s" % uuid.uuid4().hex})
    assert not sdnotify.notify("READY=1", env={sdnotify.ENV: "vsock:2:1234"})


def test_given_systemd_notify_socket_when_run_then_ready_once_listening_and_stopping_on_sigterm(fakes, tmp_path):
    """Type=notify: READY=1 when the ports listen (also from a standby), STOPPING=1 on SIGTERM."""
    fs, crm = fakes
    name = "fs-crm-test-%s" % uuid.uuid4().hex
    http_port, routing_port = free_port(), free_port()
    table = config_table(fs, crm, tmp_path / "state", http_port=http_port)
    table["routing"]["listen"] = "127.0.0.1:%d" % routing_port
    config = tmp_path / "fs-crm.toml"
    config.write_text(to_toml(table))
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(30)
        env = dict(os.environ, FS_CRM_ACCOUNT_SHOP_API_KEY=API_KEY, NOTIFY_SOCKET="@" + name)
        with open(tmp_path / "run.log", "wb") as log:
            proc = subprocess.Popen([sys.executable, "-m", "fs_crm", "run", "-c", str(config)], stdout=log,
                                    stderr=subprocess.STDOUT, env=env)
        try:
            assert sock.recv(4096) == b"READY=1\nSTATUS=active; HTTP on 127.0.0.1:%d" % http_port
            for port in (http_port, routing_port):
                socket.create_connection(("127.0.0.1", port), timeout=5).close()  # READY means listening

            # A running fs-crm holds its ports and its state dir: that is no reason to fail a check.
            checked = fs_crm("check", "--offline", "-c", str(config))
            assert checked.returncode == 0, checked.stdout
            assert "a running fs-crm holds it (pid %d on " % proc.pid in checked.stdout
            assert "[http] listen 127.0.0.1:%d: OK, in use by the running fs-crm" % http_port in checked.stdout

            # A standby has started too, as far as systemd is concerned: it may wait for ever.
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as standby_sock:
                standby_sock.bind("\0" + name + "-standby")
                standby_sock.settimeout(30)
                standby = subprocess.Popen([sys.executable, "-m", "fs_crm", "run", "-c", str(config)],
                                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                           env={**env, "NOTIFY_SOCKET": "@%s-standby" % name})
                try:
                    assert standby_sock.recv(4096).startswith(b"READY=1\nSTATUS=standby: pid %d on " % proc.pid)
                finally:
                    standby.send_signal(signal.SIGTERM)
                    assert standby.wait(timeout=20) == 0

            proc.send_signal(signal.SIGTERM)
            assert sock.recv(4096) == b"STOPPING=1"
            assert proc.wait(timeout=20) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)


def test_shipped_unit_starts_in_any_weather():
    unit = UNIT.read_text()
    settings = [line.strip() for line in unit.splitlines() if line.strip() and not line.startswith("#")]
    assert not any(line.startswith("ExecStartPre=") and "--offline" not in line for line in settings)
    for expected in ("Type=notify", "User=fs-crm", "Group=fs-crm", "Restart=on-failure",
                     "EnvironmentFile=-/etc/fs-crm/secrets.env",
                     "ExecStart=/opt/fs-crm/venv/bin/fs-crm run -c /etc/fs-crm/fs-crm.toml"):
        assert expected in settings, expected
    writable = next(line for line in settings if line.startswith("ReadWritePaths=")).split("=", 1)[1].split()
    assert "-/var/lib/fs-crm" in writable and all(path.startswith("-/") for path in writable)


def test_shipped_unit_passes_systemd_analyze_verify(tmp_path):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (Debian package systemd)")
    # verify insists that ExecStart= exists: point it at this venv's fs-crm instead of /opt/fs-crm/venv.
    executable = Path(sys.executable).with_name("fs-crm")
    unit = tmp_path / "fs-crm.service"
    unit.write_text(UNIT.read_text().replace("/opt/fs-crm/venv/bin/fs-crm",
                                             str(executable if executable.exists() else sys.executable)))
    result = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout + result.stderr == "", result.stdout + result.stderr
